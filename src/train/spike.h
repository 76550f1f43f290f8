// Loss-spike detector. A spike is a sustained jump: `confirm` consecutive steps whose loss exceeds
// `factor` x the running median of the `window` losses before them. One hard batch is not a spike:
// on heterogeneous code corpora single-batch losses swing by 2x with the documents they hold (the
// same steps in every seed when the data order is pinned), while a real instability stays up. The
// spike starts at the first of its high steps; it and the `recovery` steps after its last high step
// count as "in the spike", so a checkpoint saved there is flagged and reports can refuse it as the
// best (the seed's step-25K snapshot). Detection lags by confirm - 1 steps; the metrics record
// carries the start, so readers flag evals inside the spike that were written before it confirmed.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace slm {

struct SpikeDetector {
  int window = 32;                 // losses in the running median
  double factor = 1.5;             // loss above factor x median is high
  int confirm = 3;                 // consecutive high steps that make a spike
  int64_t recovery = 20;           // steps after a spike's last high step that are still "in" it
  // State (saved in checkpoints).
  std::vector<double> recent;      // the window, oldest first, not counting the current high run
  std::vector<double> high;        // the current run of consecutive high losses
  int64_t spike_start = INT64_MIN / 2, last_spike = INT64_MIN / 2;
  int64_t n_spikes = 0;

  // Records the loss of `step`; true when the step is part of a confirmed spike. Needs half a
  // window of history first.
  bool observe(int64_t step, double loss) {
    const bool is_high = static_cast<int>(recent.size()) >= window / 2 && loss > factor * median();
    if (!is_high) {
      for (double h : high) push(h);  // a few hard batches: ordinary data, back into the window
      high.clear();
      push(loss);
      return false;
    }
    high.push_back(loss);
    if (static_cast<int>(high.size()) < confirm) return false;
    if (static_cast<int>(high.size()) == confirm) {
      ++n_spikes;
      spike_start = step - confirm + 1;
    }
    last_spike = step;
    return true;
  }
  bool in_spike(int64_t step) const { return step >= spike_start && step - last_spike <= recovery; }

  double median() const {
    std::vector<double> v = recent;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }

 private:
  void push(double loss) {
    recent.push_back(loss);
    if (static_cast<int>(recent.size()) > window) recent.erase(recent.begin());
  }
};

}  // namespace slm
