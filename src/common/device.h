// The one seam for device and LibTorch-version differences (CPU Debian LibTorch 1.13 vs a CUDA
// LibTorch 2.x). Code elsewhere asks this header, never TORCH_VERSION or torch::cuda directly.
#pragma once
#include <string>

namespace slm::device {

// "libtorch 1.13.1, cpu (2 threads), bf16: yes"
std::string describe();
std::string torch_version();
bool cuda_available();

}  // namespace slm::device
