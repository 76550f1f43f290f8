// The loss-spike detector: the seed's transient spike (0.8 -> 3.4, recovered) is flagged, the
// recovery window lasts until the loss is back near its median from before the spike (capped) and
// covers the checkpoints saved during it, and ordinary noise, slow trends and
// single hard batches are not spikes.
#include <gtest/gtest.h>

#include <cmath>

#include "train/spike.h"

using slm::SpikeDetector;

TEST(Spike, FlagsATransientSpikeAndItsRecovery) {
  SpikeDetector d;
  int64_t step = 0;
  for (; step < 40; ++step) EXPECT_FALSE(d.observe(step, 0.8 + 0.01 * (step % 3)));
  EXPECT_FALSE(d.in_spike(step));
  const int64_t jump = step;
  EXPECT_FALSE(d.observe(step++, 3.4));  // the jump: not yet confirmed
  EXPECT_FALSE(d.observe(step++, 3.1));
  EXPECT_TRUE(d.observe(step, 2.9));    // third high step: a spike, starting at the jump
  EXPECT_EQ(d.n_spikes, 1);
  EXPECT_EQ(d.spike_start, jump);
  EXPECT_FALSE(d.in_spike(jump - 1));
  for (int64_t s = jump; s <= step; ++s) EXPECT_TRUE(d.in_spike(s)) << s;
  EXPECT_FALSE(d.observe(step + 1, 0.8));  // a fast recovery: back at the median, the spike is over
  EXPECT_FALSE(d.in_spike(step + 1));
  EXPECT_EQ(d.n_spikes, 1);
  EXPECT_FALSE(d.observe(step + 2, 0.81));
  for (double x : d.recent) EXPECT_LT(x, 1.0);  // the spike's losses never entered the window
}

// The seed's spike: 0.8 -> 3.4, then ~850 steps back down. Every step until the loss is within
// 1.1x of the median from before the spike is in it, so a checkpoint saved at step +400 is flagged.
TEST(Spike, ASlowRecoveryKeepsTheSpikeOpenUntilTheLossIsBack) {
  SpikeDetector d;
  int64_t step = 0;
  for (; step < 40; ++step) d.observe(step, 0.8);
  const int64_t jump = step;
  for (int i = 0; i < 3; ++i) d.observe(step++, 3.4);
  // Linear descent from 1.15 (below the high line at 1.2, above the 0.88 recovery line) to 0.8 over 850 steps.
  int64_t back = -1;
  for (int i = 0; i < 850; ++i, ++step) {
    const double loss = 1.15 - 0.35 * i / 850.0;
    const bool in = d.observe(step, loss);
    if (loss > 0.88) {
      EXPECT_TRUE(in) << step;
    }
    if (!in && back < 0) back = step;
  }
  EXPECT_EQ(d.n_spikes, 1);
  ASSERT_GT(back, jump + 600);  // the old fixed window closed 20 steps after the last high step
  EXPECT_TRUE(d.in_spike(jump + 400));
  EXPECT_TRUE(d.in_spike(back - 1));
  EXPECT_FALSE(d.in_spike(back));
  EXPECT_FALSE(d.observe(step, 0.8));
}

TEST(Spike, TheRecoveryWindowIsCapped) {
  SpikeDetector d;
  d.max_recovery = 200;
  int64_t step = 0;
  for (; step < 40; ++step) d.observe(step, 1.0);
  const int64_t jump = step;
  for (int i = 0; i < 3; ++i) d.observe(step++, 3.0);
  for (; step < jump + 500; ++step) d.observe(step, 1.3);  // never back within 1.1x, never high again
  EXPECT_TRUE(d.in_spike(jump + 199));
  EXPECT_FALSE(d.in_spike(jump + 200));
  EXPECT_EQ(d.n_spikes, 1);
  EXPECT_EQ(SpikeDetector().max_recovery, 1000);
}

// A checkpoint saved mid-recovery resumes the same spike: the state is the public fields.
TEST(Spike, ResumingMidRecoveryGivesTheSameWindow) {
  auto loss_at = [](int64_t s) { return s < 40 ? 1.0 : s < 43 ? 4.0 : s < 300 ? 1.2 - 0.0005 * (s - 43) : 1.0; };
  SpikeDetector a;
  for (int64_t s = 0; s < 120; ++s) a.observe(s, loss_at(s));
  SpikeDetector b;
  b.recent = a.recent;
  b.high = a.high;
  b.spike_start = a.spike_start;
  b.last_spike = a.last_spike;
  b.n_spikes = a.n_spikes;
  for (int64_t s = 120; s < 400; ++s) EXPECT_EQ(a.observe(s, loss_at(s)), b.observe(s, loss_at(s))) << s;
  EXPECT_EQ(a.last_spike, b.last_spike);
  EXPECT_GT(a.last_spike, 200);
}

TEST(Spike, SingleHardBatchesAreNotSpikes) {
  // A code corpus: most batches near 3 nats, every few steps a batch of tables or generated code.
  SpikeDetector d;
  for (int64_t s = 0; s < 400; ++s) {
    const double loss = (s % 7 == 3 || s % 11 == 5) ? 6.8 : 3.0 + 0.1 * (s % 3);
    EXPECT_FALSE(d.observe(s, loss)) << s;
  }
  EXPECT_EQ(d.n_spikes, 0);
}

TEST(Spike, NoiseAndSlowTrendsAreNotSpikes) {
  SpikeDetector d;
  for (int64_t s = 0; s < 300; ++s) EXPECT_FALSE(d.observe(s, 9.0 * std::exp(-s / 80.0) + 1.0 + 0.2 * ((s * 7919) % 5) / 5.0));
  EXPECT_EQ(d.n_spikes, 0);
}

TEST(Spike, NeedsHistoryFirst) {
  SpikeDetector d;
  EXPECT_FALSE(d.observe(0, 1.0));
  EXPECT_FALSE(d.observe(1, 100.0));  // too early to judge: only one loss seen
  EXPECT_EQ(d.median(), 50.5);
}

TEST(Spike, StateRoundTripsThroughItsFields) {
  SpikeDetector a;
  for (int64_t s = 0; s < 50; ++s) a.observe(s, 1.0 + (s % 4) * 0.05);
  SpikeDetector b;
  b.recent = a.recent;
  b.high = a.high;
  b.spike_start = a.spike_start;
  b.last_spike = a.last_spike;
  b.n_spikes = a.n_spikes;
  for (int64_t s = 50; s < 60; ++s) {
    const double loss = s >= 55 && s < 58 ? 5.0 : 1.0;
    EXPECT_EQ(a.observe(s, loss), b.observe(s, loss));
  }
  EXPECT_EQ(a.recent, b.recent);
  EXPECT_EQ(a.n_spikes, 1);
}
