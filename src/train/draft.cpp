#include "train/draft.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "common/fs.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/run.h"
#include "train/run_folder.h"
#include "train/safetensors.h"

namespace slm {

using json = nlohmann::ordered_json;

namespace {

constexpr const char* kDraftFormat = "slmlab-draft v1";
constexpr const char* kDraftFile = "draft_latest.safetensors";

// The target checkpoint's identity: its file checksum (every byte of weights and configuration).
std::string checkpoint_id(const std::string& path) {
  const ckpt::Checkpoint ck = ckpt::read(path);
  auto it = ck.metadata.find(st::kFileChecksum);
  SLM_CHECK(it != ck.metadata.end(), "[draft] ", path, " has no file checksum; re-save it with this slmlab");
  return it->second;
}

// Rows (B, T+1) of tokens and doc ids from the loader, as int64 tensors.
std::pair<torch::Tensor, torch::Tensor> next_rows(data::Loader& loader, int64_t rows) {
  const int64_t L = loader.row_len();
  std::vector<int32_t> tok(rows * L), doc(rows * L);
  for (int64_t r = 0; r < rows; ++r) loader.next(tok.data() + r * L, doc.data() + r * L);
  auto t = torch::from_blob(tok.data(), {rows, L}, torch::kInt32).to(torch::kInt64);
  auto d = torch::from_blob(doc.data(), {rows, L}, torch::kInt32).to(torch::kInt64);
  return {t, d};
}

// The draft's loss on rows (B, T) and its top-1 agreement with the target's greedy next token.
struct Measured {
  double total = 0, feature = 0, token = 0, agree = 0;
};
Measured measure(DraftHeadImpl& d, GPTImpl& target, const torch::Tensor& idx, const torch::Tensor& doc, double w_token,
                 bool with_grad) {
  torch::Tensor feat;
  {
    torch::NoGradGuard ng;
    feat = target.hidden(idx, doc);  // (B, T, C), the frozen target's features
  }
  Measured m;
  auto L = draft_loss(d, target, idx, doc, feat, w_token);
  if (with_grad) L.total.backward();
  m.total = L.total.item<double>();
  m.feature = L.feature.item<double>();
  m.token = L.token.item<double>();
  return m;
}

double agreement(DraftHeadImpl& d, GPTImpl& target, const torch::Tensor& idx, const torch::Tensor& doc) {
  torch::NoGradGuard ng;
  const int64_t T = idx.size(1);
  auto feat = target.hidden(idx, doc);
  Ctx ctx;
  ctx.cos = target.rope_cos;
  ctx.sin = target.rope_sin;
  auto d_in = doc.slice(1, 0, T - 1);
  ctx.doc_ids = d_in;
  ctx.allowed = document_causal_mask(d_in);
  auto pred = d.forward(feat.slice(1, 0, T - 1), idx.slice(1, 1), target, ctx);
  auto same = target.logits(pred).argmax(-1).eq(target.logits(feat.slice(1, 1)).argmax(-1));
  auto keep = d_in.eq(doc.slice(1, 1));
  return same.logical_and(keep).sum().item<double>() / std::max(1.0, keep.sum().item<double>());
}

}  // namespace

int draft_train(const DraftTrainOptions& opt) {
  SLM_CHECK(opt.steps >= 1, "draft train: --steps must be >= 1");
  SLM_CHECK(opt.batch_rows >= 1, "draft train: --batch-rows must be >= 1");
  SLM_CHECK(opt.lr > 0 && std::isfinite(opt.lr), "draft train: --lr must be > 0");
  SLM_CHECK(opt.w_token >= 0, "draft train: --w-token must be >= 0");
  SLM_CHECK(opt.eval_every >= 0 && opt.eval_rows >= 1, "draft train: --eval-every must be >= 0 and --eval-rows >= 1");
  LoadedRun run = load_run(opt.run_dir, opt.checkpoint);
  GPTImpl& target = *run.model;
  for (auto& p : target.parameters()) p.set_requires_grad(false);  // frozen: only the head learns
  data::DataSet ds(run.config.at("data").at("dir").get<std::string>());
  SLM_CHECK(ds.fingerprint() == run.config.at("data").at("fingerprint").get<std::string>(), "draft train: the data set ",
            ds.dir(), " is not the one ", opt.run_dir, " was trained on; restore it");
  RunFolder f{opt.out_dir.empty() ? fs::join(opt.run_dir, "draft_eagle2") : opt.out_dir};

  json cfg;
  cfg["kind"] = "eagle2_draft";
  cfg["target"] = {{"run", opt.run_dir}, {"checkpoint", fs::join(opt.run_dir, ckpt::file_name(opt.checkpoint))},
                   {"checkpoint_id", checkpoint_id(run.checkpoint)}, {"step", run.step}};
  cfg["data"] = json::parse(run.config.at("data").dump());  // the target's data set, which the head trains on
  cfg["model"] = {{"seed", opt.seed}, {"d_model", target.cfg.d_model}, {"n_head", target.cfg.n_head},
                  {"head_dim", target.cfg.head_dim}, {"context", target.cfg.context}};
  cfg["modules"] = json::array({"eagle2"});
  // What makes two draft runs the same experiment: the target checkpoint and the training settings
  // (not --steps: a resume may extend a run, and a constant rate makes that the same as one longer run).
  cfg["substrate_id"] = "eagle2-draft:" + cfg["target"]["checkpoint_id"].get<std::string>() + ":" +
                        std::to_string(opt.batch_rows) + ":" + json(opt.lr).dump() + ":" + json(opt.w_token).dump();
  cfg["draft"] = {{"steps", opt.steps}, {"batch_rows", opt.batch_rows}, {"lr", opt.lr}, {"w_token", opt.w_token},
                  {"eval_every", opt.eval_every}, {"eval_rows", opt.eval_rows}};
  prepare_run_folder(f, cfg, opt.resume);
  RunLock lock(f.dir);
  remove_stale_temp_files(f.dir);
  fs::write_atomic(f.config(), cfg.dump(2) + "\n");

  torch::manual_seed(opt.seed);
  DraftHead head(target.cfg);
  head->to(run.device);
  ParamGroup g;
  g.name = "draft";
  g.kind = "adamw";
  g.base_lr = opt.lr;
  for (auto& p : head->named_parameters()) {
    g.names.push_back(p.key());
    g.params.push_back(p.value());
  }
  Optimizer optim({g}, OptimOptions{});
  const int64_t T = target.cfg.context;
  data::Loader loader(ds, data::Split::Train, T, opt.seed, true);
  ckpt::TrainState state;
  const std::string ckpt_path = fs::join(f.dir, kDraftFile);
  if (opt.resume && fs::exists(ckpt_path)) {
    st::File file = st::read(ckpt_path);
    SLM_CHECK(file.metadata["format"] == kDraftFormat, "draft train: ", ckpt_path, " is not a draft checkpoint");
    std::map<std::string, torch::Tensor> params, ostate;
    for (auto& [name, t] : file.tensors) {
      if (name.rfind("draft.", 0) == 0) params[name.substr(6)] = t;
      else if (name.rfind("optim.", 0) == 0) ostate[name.substr(6)] = t;
    }
    torch::NoGradGuard ng;
    for (auto& p : head->named_parameters()) {
      SLM_CHECK(params.count(p.key()), "draft train: ", ckpt_path, " lacks ", p.key());
      p.value().copy_(params.at(p.key()));
    }
    optim.restore(ostate);
    state = ckpt::TrainState::from_json(json::parse(file.metadata.at("state")));
    loader.restore(state.loader);
    std::printf("draft train: resuming %s at step %lld\n", f.dir.c_str(), static_cast<long long>(state.step));
  }
  MetricsLog metrics;
  metrics.open(f.metrics(), opt.resume ? state.step : -1);
  const data::EvalRows val = data::eval_rows(ds, T, static_cast<uint64_t>(opt.eval_rows * T));
  auto val_rows = [&](const std::vector<int32_t>& v) {
    return torch::tensor(std::vector<int64_t>(v.begin(), v.end()), torch::kInt64).view({val.n_rows, T + 1}).slice(1, 0, T);
  };
  const torch::Tensor val_idx = val_rows(val.tokens).to(run.device), val_doc = val_rows(val.doc_ids).to(run.device);

  auto save = [&]() {
    st::File file;
    for (auto& p : head->named_parameters()) file.tensors.push_back({"draft." + p.key(), p.value().detach().cpu()});
    for (auto& [k, v] : optim.state()) file.tensors.push_back({"optim." + k, v.detach().cpu()});
    file.metadata["format"] = kDraftFormat;
    file.metadata["config"] = cfg.dump();
    file.metadata["step"] = std::to_string(state.step);
    file.metadata["state"] = state.to_json().dump();
    st::write(ckpt_path, file);
  };
  auto evaluate = [&]() {
    head->eval();
    Measured m;
    {
      torch::NoGradGuard ng;
      m = measure(*head, target, val_idx, val_doc, opt.w_token, false);
    }
    m.agree = agreement(*head, target, val_idx, val_doc);
    head->train();
    metrics.write({{"step", state.step}, {"val_loss", m.total}, {"val_feature", m.feature}, {"val_token", m.token},
                   {"val_top1_agree", m.agree}});
    std::printf("draft eval step %lld | loss %.4f (feature %.4f, token %.4f) | top-1 agreement with the target %.3f\n",
                static_cast<long long>(state.step), m.total, m.feature, m.token, m.agree);
    return m;
  };

  head->train();
  target.eval();
  auto since = std::chrono::steady_clock::now();  // training time between saves
  while (state.step < opt.steps) {
    auto [rows, docs] = next_rows(loader, opt.batch_rows);
    auto idx = rows.slice(1, 0, T).to(run.device), doc = docs.slice(1, 0, T).to(run.device);
    optim.zero_grad();
    const Measured m = measure(*head, target, idx, doc, opt.w_token, true);
    SLM_CHECK(std::isfinite(m.total), "draft train: the loss is not finite at step ", state.step + 1, "; lower --lr");
    optim.step(1.0);
    ++state.step;
    state.tokens += opt.batch_rows * T;
    state.loader = loader.state();
    metrics.write({{"step", state.step}, {"loss", m.total}, {"feature", m.feature}, {"token", m.token}, {"lr", opt.lr}});
    if (!opt.quiet)
      std::printf("draft step %lld/%lld | loss %.4f (feature %.4f, token %.4f)\n", static_cast<long long>(state.step),
                  static_cast<long long>(opt.steps), m.total, m.feature, m.token);
    const bool last = state.step == opt.steps;
    if (last || (opt.eval_every > 0 && state.step % opt.eval_every == 0)) {
      const Measured v = evaluate();
      state.last_val = v.total;
      if (v.total < state.best_val) {
        state.best_val = v.total;
        state.best_step = state.step;
      }
      const auto now = std::chrono::steady_clock::now();
      state.train_seconds += std::chrono::duration<double>(now - since).count();
      since = now;
      save();
    }
  }
  json summary = {{"steps", state.step}, {"val_loss", state.last_val}, {"best_val_loss", state.best_val},
                  {"target", cfg["target"]}};
  fs::write_atomic(f.summary(), summary.dump(2) + "\n");
  std::printf("draft train: %s done, %lld steps\n", f.dir.c_str(), static_cast<long long>(state.step));
  return 0;
}

LoadedDraft load_draft(const std::string& draft_dir, const GPTImpl& target, const std::string& target_checkpoint) {
  const std::string path = fs::join(draft_dir, kDraftFile);
  SLM_CHECK(fs::exists(path), "[draft] ", draft_dir, " holds no draft head (", kDraftFile, "); run slmlab draft train first");
  st::File file = st::read(path);
  SLM_CHECK(file.metadata["format"] == kDraftFormat, "[draft] ", path, " is not a draft checkpoint (format ",
            file.metadata["format"], ")");
  const json cfg = json::parse(file.metadata.at("config"));
  LoadedDraft d;
  d.target_run = cfg.at("target").at("run");
  d.target_checkpoint = cfg.at("target").at("checkpoint");
  d.step = std::stoll(file.metadata.at("step"));
  const std::string want = cfg.at("target").at("checkpoint_id");
  SLM_CHECK(checkpoint_id(target_checkpoint) == want, "[draft] ", draft_dir, " was trained for ", d.target_checkpoint,
            ", not for ", target_checkpoint, "; train a draft head for this checkpoint (slmlab draft train)");
  d.head = DraftHead(target.cfg);
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> params;
  for (auto& [name, t] : file.tensors)
    if (name.rfind("draft.", 0) == 0) params[name.substr(6)] = t;
  for (auto& p : d.head->named_parameters()) {
    SLM_CHECK(params.count(p.key()) && params.at(p.key()).sizes() == p.value().sizes(), "[draft] ", path, " lacks ",
              p.key(), " at the target's geometry");
    p.value().copy_(params.at(p.key()));
  }
  d.head->to(target.lm_head->weight.device());
  d.head->eval();
  return d;
}

}  // namespace slm
