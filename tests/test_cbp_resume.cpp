// Continual backprop across a kill (docs/modules.md section 14), through the binary: utilities,
// ages and the carried fraction are buffers that travel in the checkpoint, so a run killed with
// SIGKILL and resumed replaces the same units at the same steps as one that never stopped, and its
// metrics and final checkpoint equal the uninterrupted run's bitwise. Trains: labelled slow.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "test_util.h"
#include "train/safetensors.h"

using namespace slm;
using json = nlohmann::json;

TEST(CbpResume, KilledAndResumedRunEqualsTheUninterruptedOne) {
  slm::test::TempDir t;
  const std::string data = slm::test::small_dataset(t.path, 40, 13, 16, 512, 8192);
  const std::string substrate = t / "tiny.toml";
  slm::test::write(substrate,
                   "name = \"cbp-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                   "total_batch = 128\ndevice_batch = 4\nsteps = 40\neval_every = 20\neval_tokens = 256\n"
                   "ckpt_every = 5\nthreads = 1\nprecision = \"fp32\"\nlr_matrix = 0.05\n");
  auto cmd = [&](const std::string& out, const std::string& extra = "") {
    return std::string(SLMLAB_BIN) + " train --quiet --data " + data + " --substrate " + substrate + " --out " + out +
           " --module cbp.rate=0.01,maturity=3 " + extra;
  };
  auto lines = [](const std::string& run) {
    std::vector<std::string> out;
    std::ifstream in(run + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      json r = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (r.is_discarded()) continue;  // a line torn by the kill
      std::vector<std::string> timings;  // every *_ms, tok_s and mfu: timings differ between runs
      for (auto& [k, v] : r.items())
        if (k == "tok_s" || k == "mfu" || (k.size() > 3 && k.compare(k.size() - 3, 3, "_ms") == 0)) timings.push_back(k);
      for (auto& k : timings) r.erase(k);
      out.push_back(r.dump());
    }
    return out;
  };
  const std::string ref = t / "ref", killed = t / "killed";
  auto r = slm::test::run(cmd(ref));
  ASSERT_EQ(r.status, 0) << r.out;
  const auto expect = lines(ref);
  ASSERT_EQ(expect.size(), 43u);  // 40 steps + evals at 0, 20, 40
  const json last_eval = json::parse(expect.back());
  ASSERT_TRUE(last_eval.contains("modules")) << expect.back();
  EXPECT_GT(last_eval["modules"]["cbp.replaced"].get<double>(), 20.0) << "too few replacements to test a resume";

  pid_t pid = slm::test::start(cmd(killed));
  auto reached = [&] { return fs::exists(killed + "/metrics.jsonl") && lines(killed).size() >= 14; };  // step 12
  while (!reached()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  slm::test::stop(pid, SIGKILL);
  ASSERT_LT(lines(killed).size(), expect.size()) << "the run finished before the kill; nothing was resumed";
  r = slm::test::run(cmd(killed, "--resume"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(lines(killed), expect);
  // The final checkpoints agree on every weight and buffer, the cbp state included.
  st::File a = st::read(ref + "/ckpt_latest.safetensors"), b = st::read(killed + "/ckpt_latest.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  int ages = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& [name, tensor] = a.tensors[i];
    EXPECT_EQ(name, b.tensors[i].first);
    EXPECT_TRUE(torch::equal(tensor, b.tensors[i].second)) << name;
    ages += name.rfind("buffer.", 0) == 0 && name.find(".ffn.age") != std::string::npos;
  }
  EXPECT_EQ(ages, 2) << "both layers' ages are in the checkpoint";
}
