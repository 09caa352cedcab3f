// Difference target: operator schemas, the one input check per op and the CUDA autocast wrappers (contract
// in difference_target.h). Kernels: cpu/difference_target_kernel.cpp, cuda/difference_target_kernel.cu; fake
// kernels and the (refusing) autograd in bioplaus_kernels/ops/difference_target.py.
#include "difference_target.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace bioplaus {

tp::Activation check_difference_target_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                              const at::Tensor& h_above, const at::Tensor& weight,
                                              const at::Tensor& bias, c10::string_view activation) {
  constexpr const char* op = "difference_target";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"h_below", &h_below}, {"t_above", &t_above}, {"h_above", &h_above},
                                     {"bias", &bias}});
  tp::check_linear_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias);
  tp::check_shape(op, "t_above", t_above, h_above.sizes().vec(), "h_above's shape");
  return act;
}

tp::Activation check_difference_target_lc2d_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                                   const at::Tensor& h_above, const at::Tensor& weight,
                                                   const at::Tensor& bias, c10::IntArrayRef stride,
                                                   c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                   c10::string_view activation) {
  constexpr const char* op = "difference_target_lc2d";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"h_below", &h_below}, {"t_above", &t_above}, {"h_above", &h_above},
                                     {"bias", &bias}});
  tp::check_lc2d_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias, stride, padding,
                                  dilation);
  tp::check_shape(op, "t_above", t_above, h_above.sizes().vec(), "h_above's shape");
  return act;
}

namespace {

// Autocast (CUDA): a target is an application of the inverse layer, so it runs in the autocast dtype, like
// torch's linear layers and this package's LC ops. Under ExcludeDispatchKeyGuard the redispatch reaches the
// CUDA kernel.
at::Tensor cast(const at::Tensor& t) {
  return at::autocast::cached_cast(at::autocast::get_autocast_dtype(at::kCUDA), t, c10::DeviceType::CUDA);
}

at::Tensor difference_target_autocast(const at::Tensor& h_below, const at::Tensor& t_above,
                                      const at::Tensor& h_above, const at::Tensor& weight, const at::Tensor& bias,
                                      c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bioplaus::difference_target", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, c10::string_view)>();
  return op.call(cast(h_below), cast(t_above), cast(h_above), cast(weight), cast(bias), activation);
}

at::Tensor difference_target_lc2d_autocast(const at::Tensor& h_below, const at::Tensor& t_above,
                                           const at::Tensor& h_above, const at::Tensor& weight,
                                           const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                           c10::IntArrayRef dilation, c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bioplaus::difference_target_lc2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                                         c10::string_view)>();
  return op.call(cast(h_below), cast(t_above), cast(h_above), cast(weight), cast(bias), stride, padding, dilation,
                 activation);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("difference_target(Tensor h_below, Tensor t_above, Tensor h_above, Tensor weight, Tensor bias, "
        "str activation=\"tanh\") -> Tensor");
  m.def("difference_target_lc2d(Tensor h_below, Tensor t_above, Tensor h_above, Tensor weight, Tensor bias, "
        "int[2] stride, int[4] padding, int[2] dilation, str activation=\"tanh\") -> Tensor");
}

TORCH_LIBRARY_IMPL(bioplaus, AutocastCUDA, m) {
  m.impl("difference_target", difference_target_autocast);
  m.impl("difference_target_lc2d", difference_target_lc2d_autocast);
}

}  // namespace bioplaus
