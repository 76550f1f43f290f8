// The parts train() calls, tested without running the binary: the learning-rate schedule, the
// parameter groups (built from the roles parameters carry, module-declared ones included), gradient
// clipping, and the checkpoint's rules (one reader, one error per problem).
#include <gtest/gtest.h>
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <sys/wait.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"
#include "model/gpt.h"
#include "train/checkpoint.h"
#include "train/memory.h"
#include "train/param_groups.h"
#include "train/run_folder.h"
#include "train/schedule.h"
#include "train/substrate.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;

namespace {

ModelConfig tiny_config(std::vector<catalog::ModuleArgs> mods = {}) {
  ModelConfig c = slm::test::tiny_config(2);
  c.modules = std::move(mods);
  return c;
}

// A substrate whose model_dim() is 32, as tiny_config's.
Substrate tiny_substrate() {
  Substrate s;
  s.depth = 1;
  s.aspect = 32;
  s.head_dim = 16;
  return s;
}

const ParamGroup* group_of(const std::vector<ParamGroup>& groups, const std::string& param) {
  for (auto& g : groups)
    if (std::find(g.names.begin(), g.names.end(), param) != g.names.end()) return &g;
  return nullptr;
}

using slm::test::error_of;

}  // namespace

TEST(Schedule, WarmupConstantWarmdownByHand) {
  Substrate s;
  s.steps = 100;
  s.warmup_steps = 4;
  s.warmdown_frac = 0.25;  // the last 25 steps
  s.final_lr_frac = 0.1;
  EXPECT_DOUBLE_EQ(lr_factor(s, 0), 0.25);  // (0 + 1) / 4
  EXPECT_DOUBLE_EQ(lr_factor(s, 1), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 3), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 4), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 74), 1.0);                       // 26 steps left: before the warmdown
  EXPECT_DOUBLE_EQ(lr_factor(s, 75), 0.1 + 0.9 * 25.0 / 25.0);   // 25 left: 1.0
  EXPECT_DOUBLE_EQ(lr_factor(s, 80), 0.1 + 0.9 * 20.0 / 25.0);   // 0.82
  EXPECT_DOUBLE_EQ(lr_factor(s, 99), 0.1 + 0.9 * 1.0 / 25.0);    // 0.136
  s.warmup_steps = 0;
  s.warmdown_frac = 0.0;
  EXPECT_DOUBLE_EQ(lr_factor(s, 0), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 99), 1.0);
  s.warmdown_frac = 0.4;  // round(0.4 x 7) = 3 steps
  s.steps = 7;
  s.final_lr_frac = 0.0;
  EXPECT_DOUBLE_EQ(lr_factor(s, 3), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 4), 1.0);  // 3 left of 3
  EXPECT_DOUBLE_EQ(lr_factor(s, 5), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 6), 1.0 / 3.0);
}

TEST(ParamGroups, RolesDecideGroupsRatesAndDecay) {
  GPT m(tiny_config({test::module_args("top"), test::module_args("engram", {{"layers", "1"}, {"table_size", "257"}})}));
  Substrate s = tiny_substrate();
  s.weight_decay = 0.05;
  ASSERT_EQ(s.model_dim(), 32);
  const auto groups = param_groups(*m, s);
  // In order embed, head, matrix (no scalar group: this model's norms carry no parameters).
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].name, "embed");
  EXPECT_EQ(groups[1].name, "head");
  EXPECT_EQ(groups[2].name, "matrix");
  const double scale = std::pow(32.0 / 768.0, -0.5);  // AdamW rates scale as 1/sqrt(d / 768)
  EXPECT_DOUBLE_EQ(groups[0].base_lr, s.lr_embed * scale);
  EXPECT_DOUBLE_EQ(groups[1].base_lr, s.lr_head * scale);
  EXPECT_DOUBLE_EQ(groups[2].base_lr, s.lr_matrix);  // Muon: not scaled
  EXPECT_EQ(groups[2].kind, "muon");
  for (int i : {0, 1}) {
    EXPECT_EQ(groups[i].kind, "adamw") << groups[i].name;
    EXPECT_EQ(groups[i].weight_decay, 0.0) << groups[i].name;
  }
  EXPECT_EQ(groups[2].weight_decay, 0.05);
  EXPECT_EQ(group_of(groups, "wte.weight"), &groups[0]);
  EXPECT_EQ(group_of(groups, "lm_head.weight"), &groups[1]);
  EXPECT_EQ(group_of(groups, "objective0.head"), &groups[1]) << "an objective's declared head";
  EXPECT_EQ(group_of(groups, "blocks.0.mixer.c_q.weight"), &groups[2]);
  // Engram declares its n-gram table an Embedding: a 2-D tensor inside a block, and still not Muon's.
  std::string table;
  for (auto& p : m->named_parameters())
    if (p.key().size() > 12 && p.key().compare(p.key().size() - 12, 12, ".ngram_table") == 0) table = p.key();
  ASSERT_FALSE(table.empty());
  EXPECT_EQ(m->named_parameters()[table].dim(), 2);
  EXPECT_EQ(group_of(groups, table), &groups[0]) << table;
  // Every parameter is in exactly one group, in named_parameters order within it.
  size_t n = 0;
  for (auto& g : groups) n += g.names.size();
  EXPECT_EQ(n, m->named_parameters().size());
  // What the run records: the effective rates.
  auto j = param_groups_json(groups);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["group"], "embed");
  EXPECT_DOUBLE_EQ(j[0]["lr"].get<double>(), s.lr_embed * scale);
  EXPECT_NE(describe_param_groups(groups, s).find("width scale"), std::string::npos);
}

TEST(ParamGroups, AdamwForMatricesWhenTheSubstrateSaysSo) {
  GPT m(tiny_config());
  Substrate s = tiny_substrate();
  s.optimizer = "adamw";
  const auto groups = param_groups(*m, s);
  const ParamGroup* g = group_of(groups, "blocks.0.mixer.c_q.weight");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->kind, "adamw");
  EXPECT_DOUBLE_EQ(g->base_lr, s.lr_adamw);
  EXPECT_EQ(m->head_params(), std::vector<std::string>{"lm_head.weight"});
}

TEST(GradClip, ScalesToTheThresholdAndLeavesSmallNormsAlone) {
  GPT m(tiny_config());
  for (auto& p : m->parameters()) p.mutable_grad() = torch::full_like(p, 0.01);
  int64_t n = 0;
  for (auto& p : m->parameters()) n += p.numel();
  const double norm = std::sqrt(static_cast<double>(n) * 0.01f * 0.01f);
  ASSERT_GT(norm, 0.5);
  // Above the threshold: grads scaled by max / (norm + 1e-6), the norm returned as it was.
  auto got = clip_grad_norm(*m, 0.5);
  EXPECT_EQ(got.scalar_type(), torch::kFloat64);
  EXPECT_NEAR(got.item<double>(), norm, 1e-4 * norm);
  double after = 0;
  for (auto& p : m->parameters()) after += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  EXPECT_NEAR(std::sqrt(after), 0.5, 1e-4);
  // Below it: untouched, bit for bit.
  std::vector<torch::Tensor> before;
  for (auto& p : m->parameters()) before.push_back(p.grad().clone());
  clip_grad_norm(*m, 10.0);
  size_t i = 0;
  for (auto& p : m->parameters()) EXPECT_TRUE(torch::equal(p.grad(), before[i++]));
  // 0 = no clipping, the norm still measured.
  EXPECT_NEAR(clip_grad_norm(*m, 0.0).item<double>(), 0.5, 1e-4);
}

TEST(Checkpoint, RoundTripsAndRefusesWhatIsMissing) {
  test::TempDir t;
  const std::vector<catalog::ModuleArgs> cbp = {test::module_args("cbp")};
  GPT a(tiny_config(cbp));
  ASSERT_FALSE(a->named_buffers().is_empty());
  {
    torch::NoGradGuard ng;
    for (auto& b : a->named_buffers()) b.value().fill_(3);
  }
  Substrate s = tiny_substrate();
  Optimizer opt(param_groups(*a, s), OptimOptions{});
  ckpt::TrainState state;
  state.step = 7;
  state.best_val = 2.5;
  state.best_step = 5;
  state.loader = {1, 2, 3, 4};
  ckpt::RunIdentity id{"{}", "sub", "fp", "tok", 1};
  const std::string path = t / "ck.safetensors";
  ckpt::write(path, ckpt::encode(*a, &opt, id, state, /*in_spike=*/true, {}));

  ckpt::Checkpoint ck = ckpt::read(path);
  EXPECT_EQ(ck.step, 7);
  EXPECT_TRUE(ck.in_spike);
  EXPECT_EQ(ck.world_size, 1);
  EXPECT_TRUE(ck.rngs.count(0));
  const ckpt::TrainState back = ck.state();
  EXPECT_EQ(back.best_step, 5);
  EXPECT_EQ(back.best_val, 2.5);
  EXPECT_EQ(back.last_val, std::numeric_limits<double>::infinity());  // stored as null
  EXPECT_TRUE(back.loader == state.loader);
  ckpt::check_resumable(ck, id);
  GPT b(tiny_config(cbp));
  ckpt::load_model(ck, *b);
  for (auto& p : b->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), a->named_parameters()[p.key()])) << p.key();
  for (auto& p : b->named_buffers()) EXPECT_TRUE(torch::equal(p.value(), a->named_buffers()[p.key()])) << p.key();

  // One rule for every reader: a module buffer the model has and the file lacks is refused, by name.
  st::File f = st::read(path);
  std::string dropped;
  for (size_t i = 0; i < f.tensors.size(); ++i)
    if (f.tensors[i].first.rfind("buffer.", 0) == 0) {
      dropped = f.tensors[i].first.substr(7);
      f.tensors.erase(f.tensors.begin() + i);
      break;
    }
  ASSERT_FALSE(dropped.empty());
  st::write(t / "no_buffer.safetensors", f);
  const std::string e = error_of([&] { ckpt::load_model(ckpt::read(t / "no_buffer.safetensors"), *b); });
  EXPECT_NE(e.find("lacks module buffer " + dropped), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  // A mis-shaped parameter names itself and both shapes.
  const std::string e2 = error_of([&] {
    ModelConfig c = tiny_config();
    c.vocab = 301;
    GPT other(c);
    ckpt::load_model(ck, *other);
  });
  EXPECT_NE(e2.find("holds parameter wte.weight as (300, 32) but the model's is (301, 32)"), std::string::npos) << e2;
  // A weights-only snapshot carries buffers (evaluation needs them) but cannot be resumed.
  ckpt::write(t / "snap.safetensors", ckpt::encode(*a, nullptr, id, state, false, {}));
  ckpt::Checkpoint snap = ckpt::read(t / "snap.safetensors");
  EXPECT_FALSE(snap.buffers.empty());
  EXPECT_TRUE(snap.optim.empty());
  ckpt::load_model(snap, *b);
  EXPECT_NE(error_of([&] { ckpt::check_resumable(snap, id); }).find("weights-only snapshot"), std::string::npos);
  // Another run's checkpoint, and a file of another format.
  ckpt::RunIdentity other = id;
  other.world_size = 2;
  EXPECT_NE(error_of([&] { ckpt::check_resumable(ck, other); }).find("resume it with --nproc 1"), std::string::npos);
  st::File w;
  w.tensors.push_back({"x", torch::zeros({1})});
  w.metadata = {{"format", "slmlab-weights v1"}};
  st::write(t / "weights.safetensors", w);
  EXPECT_NE(error_of([&] { ckpt::read(t / "weights.safetensors"); }).find("is not a slmlab-ckpt v1 checkpoint"),
            std::string::npos);
  EXPECT_EQ(ckpt::file_name("best"), "ckpt_best.safetensors");
  EXPECT_EQ(ckpt::file_name("150"), "ckpt_step000150.safetensors");
  EXPECT_NE(error_of([] { ckpt::file_name("newest"); }).find("must be latest, best or a step"), std::string::npos);
}

TEST(Substrate, ModelConfigIsTheSubstratesGeometryAfterTheModulesAdjusts) {
  Substrate s;
  s.depth = 3;
  s.aspect = 40;  // 120, rounded up to head_dim 16: 128
  s.head_dim = 16;
  s.context = 64;
  s.seed = 7;
  EXPECT_NE(error_of([&] { s.model_config({}); }).find("needs the vocabulary"), std::string::npos);
  s.vocab = 300;
  ModelConfig c = s.model_config({});
  EXPECT_EQ(c.vocab, 300);
  EXPECT_EQ(c.n_layer, 3);
  EXPECT_EQ(c.d_model, 128);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.context, 64);
  EXPECT_EQ(c.layer_pattern, "A");
  EXPECT_EQ(c.seed, 7u);
  const catalog::ModelView v = s.model_view();
  EXPECT_EQ(v.d_model, 128);
  EXPECT_EQ(v.depth, 3);
  // Mamba-3 sets the layer pattern (its catalog adjust); the config carries it and the modules.
  ModelConfig m = s.model_config({test::module_args("mamba3", {{"pattern", "AM"}})});
  EXPECT_EQ(m.layer_pattern, "AM");
  ASSERT_EQ(m.modules.size(), 1u);
  EXPECT_EQ(m.modules[0].name, "mamba3");
}

// Every byte of a checkpoint is checked: a flipped digit of the saved step, best val_bpb or loader
// position (metadata), a header key and a tensor byte are each refused in one line; and a file from
// before whole-file checksums (its metadata unchecked) is refused, not trusted.
TEST(Checkpoint, EveryByteIsCheckedMetadataIncluded) {
  test::TempDir t;
  GPT a(tiny_config());
  Optimizer opt(param_groups(*a, tiny_substrate()), OptimOptions{});
  ckpt::TrainState state;
  state.step = 12;
  state.best_val = 3.4030;
  state.best_step = 12;
  state.loader = {0, 5, 1234, 9};
  const std::string path = t / "ck.safetensors";
  ckpt::write(path, ckpt::encode(*a, &opt, {"{\"softcap\":15}", "sub", "fp", "tok", 1}, state, false, {}));
  const std::string good = fs::read_file(path);
  ASSERT_NO_THROW(ckpt::read(path));
  uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= uint64_t(static_cast<unsigned char>(good[i])) << (8 * i);
  auto at = [&](const std::string& needle) {
    const size_t p = good.find(needle);
    EXPECT_LT(p, 8 + header) << needle;
    return p;
  };
  struct Flip {
    const char* what;
    size_t pos;
    char to;
  };
  const std::vector<Flip> flips = {
      {"best val_bpb digit", at("3.403") + 2, '1'},
      {"loader offset digit", at("1234") + 1, '9'},
      {"step digit", at("\"step\":\"12\"") + 9, '3'},
      {"config digit", at("softcap") + 10, '5'},  // softcap 15 -> 55
      {"header key", at("\"dtype\"") + 1, 'D'},
      {"tensor byte", good.size() - 3, static_cast<char>(good[good.size() - 3] ^ 0x40)},
  };
  for (const auto& f : flips) {
    SCOPED_TRACE(f.what);
    std::string bad = good;
    ASSERT_NE(bad[f.pos], f.to);
    bad[f.pos] = f.to;
    test::write(path, bad);
    const std::string e = error_of([&] { ckpt::read(path); });
    EXPECT_FALSE(e.empty());
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_NE(e.find(path), std::string::npos) << e;
  }
  // A file that checksums its data only (the older layout) is refused with what to do.
  std::string bytes = good;
  const size_t k = bytes.find(std::string("\"") + st::kFileChecksum + "\":\"");
  ASSERT_NE(k, std::string::npos);
  bytes.replace(k + 1, 4, "data");  // "data_xxh64", then the right data checksum
  bytes.replace(k + 14, 16, hex64(hash64(std::string_view(bytes).substr(8 + header))));
  test::write(path, bytes);
  ASSERT_NO_THROW(st::read(path));  // a plain reader checks what it can
  const std::string e = error_of([&] { ckpt::read(path); });
  EXPECT_NE(e.find("re-train"), std::string::npos) << e;
}

// A resume keeps the curve whole: every step up to the checkpoint's must be on record; later records
// and a torn last line are dropped (they will be re-made); a gap is refused in one line, naming it.
TEST(MetricsLog, AResumeRefusesAGapAndDropsWhatFollowsTheCheckpoint) {
  test::TempDir t;
  const std::string path = t / "metrics.jsonl";
  std::string lines = "{\"step\":0,\"val_bpb\":8.1}\n";
  for (int s = 1; s <= 6; ++s) lines += "{\"step\":" + std::to_string(s) + ",\"loss\":3.0}\n";
  {
    test::write(path, lines + "{\"step\":7,\"lo");  // killed mid-line after the checkpoint at 5
    MetricsLog m;
    m.open(path, 5);
    m.write({{"step", 6}, {"loss", 2.0}});
  }
  std::string kept = fs::read_file(path);
  EXPECT_EQ(kept.find("\"step\":7"), std::string::npos) << kept;
  EXPECT_NE(kept.find("{\"step\":5,"), std::string::npos) << kept;
  EXPECT_NE(kept.find("{\"step\":6,\"loss\":2.0}"), std::string::npos) << kept;
  EXPECT_EQ(kept.find("{\"step\":6,\"loss\":3.0}"), std::string::npos) << kept;
  // Steps 3 and 4 lost (a truncated or edited file): refused, the file left as it was.
  std::string gap;
  for (int s : {0, 1, 2, 5, 6}) gap += "{\"step\":" + std::to_string(s) + "}\n";
  test::write(path, gap);
  const std::string e = error_of([&] { MetricsLog().open(path, 5); });
  EXPECT_NE(e.find("lacks the records of steps 3..4"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_EQ(fs::read_file(path), gap);
  // A truncated file (the last records gone) is a gap too; a torn line before the last is damage.
  test::write(path, "{\"step\":0}\n{\"step\":1}\n");
  EXPECT_NE(error_of([&] { MetricsLog().open(path, 3); }).find("steps 2..3"), std::string::npos);
  test::write(path, "{\"step\":1}\n{\"st\n{\"step\":2}\n");
  EXPECT_NE(error_of([&] { MetricsLog().open(path, 2); }).find("line 2 is not JSON"), std::string::npos);
  // A fresh start keeps nothing, whatever was there.
  MetricsLog().open(path, -1);
  EXPECT_EQ(fs::read_file(path), "");
}

// Half-written checkpoints of killed runs ("<file>.tmp.<pid>", the pid dead) are removed at the next
// start; a live process's temp file and other files stay.
TEST(RunFolder, StaleTempFilesOfKilledRunsAreRemoved) {
  test::TempDir t;
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  int status = 0;
  ::waitpid(dead, &status, 0);  // reaped: its pid is no live process
  const std::string stale = t / ("ckpt_latest.safetensors.tmp." + std::to_string(dead));
  const std::string live = t / ("ckpt_best.safetensors.tmp." + std::to_string(::getppid()));
  const std::string mine = t / ("summary.json.tmp." + std::to_string(::getpid()));
  for (const auto& p : {stale, live, mine}) test::write(p, "half");
  test::write(t / "ckpt_latest.safetensors", "x");
  test::write(t / "notes.tmp.abc", "x");
  EXPECT_EQ(remove_stale_temp_files(t.path), 2);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(mine));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(t / "ckpt_latest.safetensors"));
  EXPECT_TRUE(fs::exists(t / "notes.tmp.abc"));
}

// ---- the memory estimate (train/memory.h) against the bytes LibTorch's CPU allocator really holds

namespace {

// Every CPU tensor allocation passes through here while installed: live bytes and their peak.
struct CountingAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
  mutable std::atomic<int64_t> live{0}, peak{0};
  struct Held {
    c10::DataPtr inner;
    int64_t n;
    const CountingAllocator* owner;
  };
  static void release(void* p) {
    auto* h = static_cast<Held*>(p);
    h->owner->live -= h->n;
    delete h;
  }
  c10::DataPtr allocate(size_t n) const override {
    c10::DataPtr inner = base->allocate(n);
    void* data = inner.get();
    const c10::Device dev = inner.device();
    auto* h = new Held{std::move(inner), static_cast<int64_t>(n), this};
    const int64_t now = live += static_cast<int64_t>(n);
    int64_t p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    return {data, h, &release, dev};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
};

}  // namespace

// One fp32 training step (forward, backward, optimizer) of a model big enough that its tensors, not
// LibTorch's bookkeeping, dominate: the stated estimate lies between 1x and 2x of the allocator's
// peak. Allocation sizes follow from the shapes and the code path alone, so this holds on any machine.
TEST(Memory, EstimateBoundsTheAllocatorsPeakOfATrainingStep) {
  struct Geometry {
    int64_t d_model, n_head, context, rows;
  };
  // Matrices and MLP dominate in the first; attention scores (T x T per head) in the second.
  for (const Geometry g : {Geometry{128, 4, 256, 4}, Geometry{64, 4, 512, 2}}) {
    ModelConfig c = slm::test::tiny_config(2);
    c.vocab = 512;
    c.d_model = g.d_model;
    c.n_head = g.n_head;
    c.head_dim = g.d_model / g.n_head;
    c.context = g.context;
    Substrate sub = tiny_substrate();
    CountingAllocator counting;
    counting.base = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&counting, /*priority=*/255);
    double estimate = 0;
    int64_t measured = 0;
    {
      GPT m(c);
      auto groups = param_groups(*m, sub);
      Optimizer opt(groups, OptimOptions{});
      estimate = estimate_memory(c, param_counts(groups), g.rows, 1, false).total();
      auto idx = torch::randint(c.vocab, {g.rows, c.context + 1}, torch::kInt64);
      auto docs = torch::zeros({g.rows, c.context}, torch::kInt64);
      auto loss = m->loss(idx.slice(1, 0, c.context), idx.slice(1, 1), docs);
      loss.backward();
      opt.step(1.0);
      measured = counting.peak.load();
    }
    c10::SetCPUAllocator(counting.base, 255);
    std::printf("C %lld T %lld rows %lld: memory estimate %.1f MiB, allocator peak %.1f MiB (ratio %.2f)\n",
                (long long)g.d_model, (long long)g.context, (long long)g.rows, estimate / 1048576.0,
                measured / 1048576.0, estimate / measured);
    EXPECT_GE(estimate, double(measured)) << "C " << g.d_model << " T " << g.context;
    EXPECT_LE(estimate, 2.0 * double(measured)) << "C " << g.d_model << " T " << g.context;
  }
}

// The baseline's count is exact for a model without modules: the same number the built model holds.
TEST(Memory, BaselineCountIsTheBuiltModelsCount) {
  ModelConfig c = slm::test::tiny_config(3);
  GPT m(c);
  auto counts = param_counts(param_groups(*m, tiny_substrate()));
  auto base = baseline_params(c, 1, true);
  EXPECT_EQ(base.total(), counts.total());
  EXPECT_EQ(base.muon, counts.muon);
  EXPECT_EQ(base.matrices, counts.matrices);
}
