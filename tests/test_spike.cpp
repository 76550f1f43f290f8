// The loss-spike detector: the seed's transient spike (0.8 -> 3.4, recovered) is flagged, the
// recovery window covers the checkpoints saved during it, and ordinary noise, slow trends and
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
  for (int64_t s = jump; s <= step + 20; ++s) EXPECT_TRUE(d.in_spike(s)) << s;
  EXPECT_FALSE(d.in_spike(step + 21));
  EXPECT_FALSE(d.observe(step + 1, 0.8));
  EXPECT_EQ(d.n_spikes, 1);
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
