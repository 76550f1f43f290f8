// In-process rank groups for the distributed tests (data, tensor and context parallelism): ranks as
// threads of one Gloo group, so a test compares ranks without launching processes.
#pragma once
#include <gtest/gtest.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "train/dist.h"

namespace slm::test {

// Runs fn(comm) on `world` threads, each a rank of one Gloo group met through a shared HashStore;
// an exception on any rank fails the test with that rank's message.
template <class Fn>
void with_group(int world, Fn fn) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::thread> ts;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        dist::World w;
        w.rank = r;
        w.size = world;
        dist::Comm comm(store, w, torch::kCPU);
        fn(comm);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

}  // namespace slm::test
