// The lc2d algorithm selection (contract in lc2d_selection.h) and the operators that drive it from Python
// (bioplaus_kernels.backends.lc2d): process-wide state behind one mutex, like torch.backends.cudnn's flags.
#include "lc2d_selection.h"

#include "common/checks.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

namespace bioplaus {
namespace {

constexpr std::array<const char*, 3> kPassNames{"forward", "backward_input", "backward_weight"};

// A measured winner: on `device` ("cpu" or "cuda"), for `pass`, shape class and dtype.
struct TableRow {
  const char* device;
  const char* pass;
  const char* shape_class;
  const char* dtype;
  const char* algorithm;
};

// BEGIN default table: written by benchmarks/lc2d_selection_table.py from its JSON sources; do not edit.
constexpr TableRow kDefaultTable[] = {
    {"cpu", "backward_input", "large-high", "float32", "library"},  // measured
    {"cpu", "backward_input", "large-low", "float32", "direct"},  // measured
    {"cpu", "backward_input", "mid-high", "float32", "direct"},  // measured
    {"cpu", "backward_input", "mid-low", "float32", "library"},  // measured
    {"cpu", "backward_input", "small-low", "float32", "direct"},  // measured
    {"cpu", "backward_weight", "large-high", "float32", "library"},  // measured
    {"cpu", "backward_weight", "large-low", "float32", "direct"},  // measured
    {"cpu", "backward_weight", "mid-high", "float32", "direct"},  // measured
    {"cpu", "backward_weight", "mid-low", "float32", "direct"},  // measured
    {"cpu", "backward_weight", "small-low", "float32", "direct"},  // measured
    {"cpu", "forward", "large-high", "float32", "library"},  // measured
    {"cpu", "forward", "large-low", "float32", "direct"},  // measured
    {"cpu", "forward", "mid-high", "float32", "direct"},  // measured
    {"cpu", "forward", "mid-low", "float32", "direct"},  // measured
    {"cpu", "forward", "small-low", "float32", "direct"},  // measured
    {"cuda", "backward_input", "large-high", "bfloat16", "library"},  // proxy
    {"cuda", "backward_input", "large-high", "float32", "library"},  // proxy
    {"cuda", "backward_input", "large-low", "bfloat16", "library"},  // proxy
    {"cuda", "backward_input", "large-low", "float32", "fused"},  // proxy
    {"cuda", "backward_input", "mid-high", "bfloat16", "library"},  // proxy
    {"cuda", "backward_input", "mid-high", "float32", "library"},  // proxy
    {"cuda", "backward_input", "mid-low", "bfloat16", "fused"},  // proxy
    {"cuda", "backward_input", "mid-low", "float32", "fused"},  // proxy
    {"cuda", "backward_input", "small-low", "bfloat16", "library"},  // proxy
    {"cuda", "backward_input", "small-low", "float32", "fused"},  // proxy
    {"cuda", "backward_weight", "large-high", "bfloat16", "library"},  // proxy
    {"cuda", "backward_weight", "large-high", "float32", "library"},  // proxy
    {"cuda", "backward_weight", "large-low", "bfloat16", "library"},  // proxy
    {"cuda", "backward_weight", "large-low", "float32", "library"},  // proxy
    {"cuda", "backward_weight", "mid-high", "bfloat16", "library"},  // proxy
    {"cuda", "backward_weight", "mid-high", "float32", "library"},  // proxy
    {"cuda", "backward_weight", "mid-low", "bfloat16", "library"},  // proxy
    {"cuda", "backward_weight", "mid-low", "float32", "library"},  // proxy
    {"cuda", "backward_weight", "small-low", "bfloat16", "fused"},  // proxy
    {"cuda", "backward_weight", "small-low", "float32", "fused"},  // proxy
    {"cuda", "forward", "large-high", "bfloat16", "fused"},  // proxy
    {"cuda", "forward", "large-high", "float32", "fused"},  // proxy
    {"cuda", "forward", "large-low", "bfloat16", "fused"},  // proxy
    {"cuda", "forward", "large-low", "float32", "fused"},  // proxy
    {"cuda", "forward", "mid-high", "bfloat16", "fused"},  // proxy
    {"cuda", "forward", "mid-high", "float32", "fused"},  // proxy
    {"cuda", "forward", "mid-low", "bfloat16", "fused"},  // proxy
    {"cuda", "forward", "mid-low", "float32", "fused"},  // proxy
    {"cuda", "forward", "small-low", "bfloat16", "fused"},  // proxy
    {"cuda", "forward", "small-low", "float32", "fused"},  // proxy
};
// END default table

struct State {
  std::mutex mutex;
  bool env_read = false;
  bool autotune = false;
  std::array<std::string, 3> forced;
  // (pass, geometry, dtype, device) -> winner.
  std::map<std::string, std::string> cache;
  std::array<std::string, 3> last;
  // Test hook: scripted candidate times in ms, by name; empty = the real timer.
  std::map<std::string, double> test_times;
  int64_t timer_calls = 0;
  int64_t workspace_limit = int64_t{64} << 20;
};

State& state() {
  static State s;
  return s;
}

int pass_index(c10::string_view name) {
  for (size_t i = 0; i < kPassNames.size(); ++i) {
    if (name == kPassNames[i]) return static_cast<int>(i);
  }
  BIOPLAUS_CHECK(false, "lc2d algorithm selection: pass must be one of forward, backward_input, backward_weight, got '",
                 std::string(name), "'");
  return -1;
}

// BIOPLAUS_LC2D_ALGORITHM: "name" (every pass) or "pass=name,pass=name".
void parse_forced(const std::string& spec, std::array<std::string, 3>& forced) {
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos) {
      forced.fill(item);
    } else {
      forced[pass_index(item.substr(0, eq))] = item.substr(eq + 1);
    }
  }
}

// Reads the environment once, under the lock.
void read_env(State& s) {
  if (s.env_read) return;
  s.env_read = true;
  if (const char* v = std::getenv("BIOPLAUS_LC2D_AUTOTUNE")) s.autotune = std::string(v) == "1";
  if (const char* v = std::getenv("BIOPLAUS_LC2D_ALGORITHM")) parse_forced(v, s.forced);
  if (const char* v = std::getenv("BIOPLAUS_LC2D_WORKSPACE_MB")) {
    const int64_t mb = std::atoll(v);
    BIOPLAUS_CHECK(mb > 0, "BIOPLAUS_LC2D_WORKSPACE_MB must be a positive number of MiB, got '", v, "'");
    s.workspace_limit = mb << 20;
  }
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  for (const auto& n : names) {
    if (n == name) return true;
  }
  return false;
}

// The dtype names of the table (torch's Python names; "tfloat32": float32 on CUDA while torch lets cuBLAS use
// TF32); float16 takes bfloat16's rows and tfloat32 float32's when they have none.
std::string dtype_name(at::ScalarType dtype, c10::Device device) {
  switch (dtype) {
    case at::kFloat: return device.is_cuda() && at::globalContext().allowTF32CuBLAS() ? "tfloat32" : "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

std::string cache_key(Lc2dPass pass, const Lc2dGeometry& g, at::ScalarType dtype, c10::Device device) {
  std::ostringstream k;
  k << kPassNames[static_cast<int>(pass)] << " N" << g.N << " " << g.C_in << "x" << g.H << "x" << g.W << "->"
    << g.C_out << "x" << g.H_out << "x" << g.W_out << " k" << g.kH << "x" << g.kW << " s" << g.sH << "x" << g.sW
    << " p" << g.pT << "," << g.pL << " d" << g.dH << "x" << g.dW << " " << dtype_name(dtype, device) << " "
    << device.str();
  return k.str();
}

std::string table_default(Lc2dPass pass, const Lc2dGeometry& g, at::ScalarType dtype, c10::Device device,
                          const std::vector<std::string>& candidates) {
  const std::string dev = device.is_cuda() ? "cuda" : "cpu";
  const std::string cls = lc2d_shape_class(g);
  const std::string name = dtype_name(dtype, device);
  const std::string fallback = name == "float16" ? "bfloat16" : name == "tfloat32" ? "float32" : "";
  for (const std::string& dt : {name, fallback}) {
    for (const TableRow& row : kDefaultTable) {
      if (dev == row.device && cls == row.shape_class && dt == row.dtype &&
          std::string(row.pass) == kPassNames[static_cast<int>(pass)] && contains(candidates, row.algorithm)) {
        return row.algorithm;
      }
    }
  }
  return candidates.front();
}

}  // namespace

const char* lc2d_pass_name(Lc2dPass pass) { return kPassNames[static_cast<int>(pass)]; }

std::string lc2d_shape_class(const Lc2dGeometry& g) {
  const int64_t K = g.patch();
  const char* k = K <= 32 ? "small" : K <= 512 ? "mid" : "large";
  const bool high = g.kH * g.kW > 3 * g.sH * g.sW;
  return std::string(k) + (high ? "-high" : "-low");
}

std::string select_lc2d_algorithm(Lc2dPass pass, const Lc2dGeometry& g, at::ScalarType dtype, c10::Device device,
                                  const std::vector<std::string>& candidates,
                                  const std::function<double(const std::string&)>& time_ms,
                                  const std::string& variant) {
  State& s = state();
  const int pi = static_cast<int>(pass);
  std::unique_lock<std::mutex> lock(s.mutex);
  read_env(s);
  std::string chosen;
  if (!s.forced[pi].empty()) {
    BIOPLAUS_CHECK(contains(candidates, s.forced[pi]), "lc2d: the forced ", kPassNames[pi], " algorithm is '",
                   s.forced[pi], "', but the algorithms of that pass on ", device.is_cuda() ? "cuda" : "cpu",
                   " are: ", join(candidates));
    chosen = s.forced[pi];
  } else if (s.autotune && !at::globalContext().deterministicAlgorithms()) {
    const std::string key = cache_key(pass, g, dtype, device) + (variant.empty() ? "" : " " + variant);
    const auto hit = s.cache.find(key);
    if (hit != s.cache.end()) {
      chosen = hit->second;
    } else {
      const bool scripted = !s.test_times.empty();
      const std::map<std::string, double> scripted_times = s.test_times;
      lock.unlock();  // the candidates run ops of their own; other threads may select meanwhile
      double best = 0;
      for (const std::string& name : candidates) {
        double t = time_ms(name);
        if (scripted) {
          const auto it = scripted_times.find(name);
          BIOPLAUS_CHECK(it != scripted_times.end(), "lc2d: the test timer has no time for algorithm '", name, "'");
          t = it->second;
        }
        if (chosen.empty() || t < best) {
          chosen = name;
          best = t;
        }
      }
      lock.lock();
      if (scripted) s.timer_calls += static_cast<int64_t>(candidates.size());
      s.cache.emplace(key, chosen);
      chosen = s.cache.at(key);  // a concurrent first call may have cached first: one winner per key
    }
  } else {
    chosen = table_default(pass, g, dtype, device, candidates);
  }
  s.last[pi] = chosen;
  return chosen;
}

int64_t lc2d_workspace_limit() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  return s.workspace_limit;
}

namespace {

void set_workspace_limit(int64_t bytes) {
  BIOPLAUS_CHECK(bytes > 0, "lc2d_selection_set_workspace_limit: bytes must be positive, got ", bytes);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  s.workspace_limit = bytes;
}

void set_autotune(bool enabled) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  s.autotune = enabled;
}

bool autotune_enabled() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  return s.autotune;
}

void set_forced(c10::string_view forward, c10::string_view backward_input, c10::string_view backward_weight) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  s.forced = {std::string(forward), std::string(backward_input), std::string(backward_weight)};
}

std::vector<std::string> forced() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  read_env(s);
  return {s.forced.begin(), s.forced.end()};
}

std::vector<std::string> selection_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::vector<std::string> out;
  for (const auto& [key, algo] : s.cache) out.push_back(key + " -> " + algo);
  return out;
}

void clear_selection_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.cache.clear();
}

std::vector<std::string> last_algorithms() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return {s.last.begin(), s.last.end()};
}

void set_test_timer(c10::ArrayRef<c10::string_view> names, c10::ArrayRef<double> ms) {
  BIOPLAUS_CHECK(names.size() == ms.size(), "lc2d_selection_set_test_timer: names has ", names.size(),
                 " entries but ms has ", ms.size());
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.test_times.clear();
  for (size_t i = 0; i < names.size(); ++i) s.test_times[std::string(names[i])] = ms[i];
  s.timer_calls = 0;
}

int64_t test_timer_calls() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.timer_calls;
}

std::string shape_class_of(c10::IntArrayRef input, int64_t C_out, c10::IntArrayRef kernel_size, c10::IntArrayRef stride) {
  BIOPLAUS_CHECK(input.size() == 4 && kernel_size.size() == 2 && stride.size() == 2,
                 "lc2d_shape_class: input must have 4 sizes, kernel_size and stride 2, got ", input.size(), ", ",
                 kernel_size.size(), " and ", stride.size());
  Lc2dGeometry g{};
  g.N = input[0];
  g.C_in = input[1];
  g.H = input[2];
  g.W = input[3];
  g.C_out = C_out;
  g.kH = kernel_size[0];
  g.kW = kernel_size[1];
  g.sH = stride[0];
  g.sW = stride[1];
  return lc2d_shape_class(g);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("lc2d_selection_set_autotune(bool enabled) -> ()", &set_autotune);
  m.def("lc2d_selection_autotune() -> bool", &autotune_enabled);
  m.def("lc2d_selection_set_forced(str forward, str backward_input, str backward_weight) -> ()", &set_forced);
  m.def("lc2d_selection_forced() -> str[]", &forced);
  m.def("lc2d_selection_cache() -> str[]", &selection_cache);
  m.def("lc2d_selection_clear_cache() -> ()", &clear_selection_cache);
  m.def("lc2d_selection_last() -> str[]", &last_algorithms);
  m.def("lc2d_selection_set_test_timer(str[] names, float[] ms) -> ()", &set_test_timer);
  m.def("lc2d_selection_test_timer_calls() -> int", &test_timer_calls);
  m.def("lc2d_selection_set_workspace_limit(int bytes) -> ()", &set_workspace_limit);
  m.def("lc2d_selection_workspace_limit() -> int", &lc2d_workspace_limit);
  m.def("lc2d_shape_class(int[] input, int c_out, int[] kernel_size, int[] stride) -> str", &shape_class_of);
}

}  // namespace bioplaus
