// Host-side input-check helpers shared by the ops' check_<op>_inputs() functions, so that every op
// words the same problem the same way (the Python fake kernels mirror these messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace bioplaus {

// "[2, 3, 4]"
inline std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// The kernels' dtypes: float32/float64 everywhere, float16/bfloat16 too on CUDA.
inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  const bool cpu_ok = dt == at::kFloat || dt == at::kDouble;
  if (t.is_cuda()) {
    TORCH_CHECK(cpu_ok || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                " must be float32, float64, float16 or bfloat16 on CUDA, got ", dt);
  } else {
    TORCH_CHECK(cpu_ok, op, ": ", name, " must be float32 or float64 on the CPU, got ", dt);
  }
}

// Same device and dtype.
inline void check_same(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                       const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", a_name, " is on ", a.device(), " but ", b_name, " is on ",
              b.device(), "; they must be on the same device");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", a_name, " has dtype ", a.scalar_type(), " but ",
              b_name, " has dtype ", b.scalar_type(), "; they must match");
}

}  // namespace bioplaus
