// Loss-spike detector. A spike is a sustained jump: `confirm` consecutive steps whose loss exceeds
// `factor` x the running median of the `window` losses before them. One hard batch is not a spike:
// on heterogeneous code corpora single-batch losses swing by 2x with the documents they hold (the
// same steps in every seed when the data order is pinned), while a real instability stays up. The
// spike starts at the first of its high steps and lasts until the loss is back: within `recovered`
// x the median from before the spike, or `max_recovery` steps after its start, whichever comes
// first (the seed's spike took ~850 steps to recover; a fixed 20-step window let the step-25K
// snapshot through as "best"). Every step in between is "in the spike", so a checkpoint saved there
// is flagged and reports refuse it. While a spike is open the window is frozen, so the median it
// recovers to is the one from before it, and that median is part of the saved state.
// Detection lags by confirm - 1 steps; the metrics record carries the start, so readers flag evals
// inside the spike that were written before it confirmed. observe() must see consecutive steps
// (a resumed run continues at the step after its checkpoint); the state is the public fields.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace slm {

struct SpikeDetector {
  int window = 32;                 // losses in the running median
  double factor = 1.5;             // loss above factor x median is high
  int confirm = 3;                 // consecutive high steps that make a spike
  double recovered = 1.1;          // loss at or below recovered x the pre-spike median ends the spike
  int64_t max_recovery = 1000;     // steps from a spike's start after which it ends regardless
  // State (saved in checkpoints).
  std::vector<double> recent;      // the window, oldest first; frozen while a spike is open
  std::vector<double> high;        // the current run of consecutive high losses
  int64_t spike_start = INT64_MIN / 2, last_spike = INT64_MIN / 2;  // the last spike's first and last step so far
  int64_t n_spikes = 0;

  // Records the loss of `step`; true when the step is inside a confirmed spike (its high steps or
  // its recovery). Needs half a window of history first.
  bool observe(int64_t step, double loss) {
    const bool open = n_spikes > 0 && last_spike >= step - 1;  // the spike reached the previous step
    const bool is_high = static_cast<int>(recent.size()) >= window / 2 && loss > factor * median();
    if (open) {
      if (is_high) high.push_back(loss);
      else high.clear();  // a confirmed spike's losses are not ordinary data: they never enter the window
      const bool back = !is_high && loss <= recovered * median();
      if (back || step - spike_start >= max_recovery) {
        high.clear();
        push(loss);
        return false;
      }
      last_spike = step;
      return true;
    }
    if (!is_high) {
      for (double h : high) push(h);  // a few hard batches: ordinary data, back into the window
      high.clear();
      push(loss);
      return false;
    }
    high.push_back(loss);
    if (static_cast<int>(high.size()) < confirm) return false;
    ++n_spikes;
    spike_start = step - confirm + 1;
    last_spike = step;
    return true;
  }
  bool in_spike(int64_t step) const { return step >= spike_start && step <= last_spike; }

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
