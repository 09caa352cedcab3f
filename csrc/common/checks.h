// Host-side input-check helpers shared by the ops' check_<op>_inputs() functions, so that every op
// words the same problem the same way (the Python fake kernels mirror these messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

namespace bioplaus {

// Error messages are built by appending strings, numbers through std::to_string / snprintf, never through
// an iostream. Why: on the H200 machine's image (torch 2.11, Python 3.12, extension built there), every
// check whose message streamed a number from this library's code (`TORCH_CHECK(seed >= 0, ..., seed)`)
// crashed the process with a segfault while throwing, where messages of strings alone were reported
// normally; torch's own errors with numbers were fine. The native frames inside the crash were not
// captured, so the cause is not established (a libstdc++ locale facet used from inline code of a newer
// compiler than the runtime library is the likely one); messages that never touch a stream avoid it.
// BIOPLAUS_CHECK(cond, parts...) is TORCH_CHECK with the message built that way; the parts are evaluated
// only when cond is false.
namespace message_part {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, std::string_view v) { s.append(v.data(), v.size()); }
template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, char>, int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, double v) {  // as an ostream prints it: %g, 6 significant digits
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  s += buf;
}
inline void append(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }
// "[2, 3, 4]"
inline void append(std::string& s, c10::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(v[i]);
  }
  s += "]";
}
}  // namespace message_part

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (message_part::append(s, parts), ...);
  return s;
}

#define BIOPLAUS_CHECK(cond, ...) TORCH_CHECK(cond, ::bioplaus::message(__VA_ARGS__))

// "bioplaus::<name>", the operator's qualified name for a dispatcher lookup. The namespace is expanded from
// the identifier, because the CPU execution layer of the tests compiles these sources into a second
// library with `bioplaus` defined as `bioplaus_emu` (docs/emulation.md).
#define BIOPLAUS_STRINGIFY_(x) #x
#define BIOPLAUS_STRINGIFY(x) BIOPLAUS_STRINGIFY_(x)
#define BIOPLAUS_OP(name) BIOPLAUS_STRINGIFY(bioplaus) "::" name

// Whether a tensor's data is CUDA device memory to the kernels: in the CPU execution layer of the tests, CPU
// tensors stand in for it (docs/emulation.md).
inline bool on_cuda(const at::Tensor& t) {
#if defined(BIOPLAUS_CUDA_EMULATION)
  return true;
#else
  return t.is_cuda();
#endif
}

// "[2, 3, 4]"
inline std::string shape_str(c10::IntArrayRef s) { return message(s); }

// The kernels' dtypes: float32/float64 everywhere, float16/bfloat16 too on CUDA.
inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  const bool cpu_ok = dt == at::kFloat || dt == at::kDouble;
  if (on_cuda(t)) {
    BIOPLAUS_CHECK(cpu_ok || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                   " must be float32, float64, float16 or bfloat16 on CUDA, got ", dt);
  } else {
    BIOPLAUS_CHECK(cpu_ok, op, ": ", name, " must be float32 or float64 on the CPU, got ", dt);
  }
}

// Same device and dtype.
inline void check_same(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                       const at::Tensor& b) {
  BIOPLAUS_CHECK(a.device() == b.device(), op, ": ", a_name, " is on ", a.device(), " but ", b_name, " is on ",
                 b.device(), "; they must be on the same device");
  BIOPLAUS_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", a_name, " has dtype ", a.scalar_type(), " but ",
                 b_name, " has dtype ", b.scalar_type(), "; they must match");
}

// A list argument of `len` values, each >= min.
inline void check_int_list(const char* op, const char* name, c10::IntArrayRef v, size_t len, int64_t min) {
  BIOPLAUS_CHECK(v.size() == len, op, ": ", name, " must have ", len, " values, got ", v.size(), " (", shape_str(v),
                 ")");
  for (int64_t e : v) {
    BIOPLAUS_CHECK(e >= min, op, ": ", name, " values must be >= ", min, ", got ", shape_str(v));
  }
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  BIOPLAUS_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout, ", got a ", t.dim(),
                 "-D tensor of shape ", shape_str(t.sizes()));
}

// The counter arguments of every op that draws Philox numbers (common/philox.h): the key's seed and stream
// (an independent sequence per stream, not a CUDA stream) and the step of the counter.
inline void check_seed_stream_step(const char* op, int64_t seed, int64_t stream, int64_t step) {
  BIOPLAUS_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  BIOPLAUS_CHECK(stream >= 0, op, ": stream must be >= 0, got ", stream);
  BIOPLAUS_CHECK(step >= 0, op, ": step must be >= 0, got ", step);
}

}  // namespace bioplaus
