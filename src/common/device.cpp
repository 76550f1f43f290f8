#include "common/device.h"

#include <torch/torch.h>

#include <sstream>

namespace slm::device {

std::string torch_version() {
  std::ostringstream os;
  os << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
  return os.str();
}

bool cuda_available() { return torch::cuda::is_available(); }

std::string describe() {
  std::ostringstream os;
  os << "libtorch " << torch_version() << ", ";
  if (cuda_available())
    os << "cuda (" << torch::cuda::device_count() << " devices)";
  else
    os << "cpu (" << at::get_num_threads() << " threads)";
  return os.str();
}

}  // namespace slm::device
