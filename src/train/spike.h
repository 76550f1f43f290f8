// Loss-spike detector: a step whose loss exceeds `factor` x the running median of the last `window`
// losses is a spike; the `recovery` steps after one still count as "in a spike", so a checkpoint
// saved there is flagged and reports can refuse it as the best (the seed's step-25K snapshot).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace slm {

struct SpikeDetector {
  int window = 32;                 // losses in the running median
  double factor = 1.5;             // loss above factor x median is a spike
  int64_t recovery = 20;           // steps after a spike that are still "in" it
  std::vector<double> recent;      // the window, oldest first (saved in checkpoints)
  int64_t last_spike = INT64_MIN / 2;
  int64_t n_spikes = 0;

  // Records the loss of `step`; true when it is a spike. Needs half a window of history first.
  bool observe(int64_t step, double loss) {
    bool spike = false;
    if (static_cast<int>(recent.size()) >= window / 2 && loss > factor * median()) {
      spike = true;
      last_spike = step;
      ++n_spikes;
    }
    recent.push_back(loss);
    if (static_cast<int>(recent.size()) > window) recent.erase(recent.begin());
    return spike;
  }
  bool in_spike(int64_t step) const { return step - last_spike <= recovery; }

  double median() const {
    std::vector<double> v = recent;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
};

}  // namespace slm
