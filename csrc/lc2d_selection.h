// Which algorithm computes each pass of an lc2d call (docs/algorithms.md), in the manner of
// torch.backends.cudnn: a default from a table of measured winners per shape class, an autotune switch that
// times every candidate on the first call of a (pass, geometry, dtype, device) and keeps the winner for the
// process, and a force switch for tests and benchmarks.
//
// Order of precedence for one call:
//   1. the forced algorithm of the pass (lc2d_set_forced, or BIOPLAUS_LC2D_ALGORITHM read on first use:
//      "library", or per pass "forward=fused,backward_input=library,backward_weight=library");
//      a forced name that is not a candidate on this device is an error naming the candidates;
//   2. with autotune on (lc2d_set_autotune, or BIOPLAUS_LC2D_AUTOTUNE=1 read on first use) and
//      torch.use_deterministic_algorithms off: the cached winner of the call's key, or, on the first call
//      of a key, every candidate timed once and the fastest cached (ties go to the earlier candidate);
//   3. the default table's entry for (device type, pass, shape class, dtype), else the first candidate.
// Every algorithm is deterministic by itself; step 2 is the only place where timing can change a result's
// last bits, which is why deterministic mode skips it.
#pragma once

#include "common/lc2d_geometry.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <string>
#include <vector>

namespace bioplaus {

enum class Lc2dPass : int { kForward = 0, kBackwardInput = 1, kBackwardWeight = 2 };

const char* lc2d_pass_name(Lc2dPass pass);

// The shape class of the default table: patch length K (small <= 32 < mid <= 512 < large) and window
// overlap kH * kW / (sH * sW) (low <= 3 < high), e.g. "mid-high".
std::string lc2d_shape_class(const Lc2dGeometry& g);

// Returns the name of the algorithm that runs this call (one of `candidates`, in the device's preference
// order). `time_ms(name)` runs candidate `name` once on the call's inputs and returns its time in
// milliseconds; it is called only while autotuning. `variant` joins the autotuner's key where the
// algorithms' relative speed depends on more than the geometry (the input gradient with a generated
// feedback matrix: "generated feedback").
std::string select_lc2d_algorithm(Lc2dPass pass, const Lc2dGeometry& g, at::ScalarType dtype, c10::Device device,
                                  const std::vector<std::string>& candidates,
                                  const std::function<double(const std::string&)>& time_ms,
                                  const std::string& variant = "");

// The workspace budget of the library algorithms in bytes (default 64 MiB; lc2d_selection_set_workspace_limit,
// or BIOPLAUS_LC2D_WORKSPACE_MB read on first use). A chunk always holds at least one position, so a
// position whose operands alone exceed it still runs.
int64_t lc2d_workspace_limit();

}  // namespace bioplaus
