// The Python module bioplaus_kernels._C. Importing it loads this shared library, whose static
// initialisers register the operators (TORCH_LIBRARY_FRAGMENT) and their CPU/CUDA/autocast kernels.
// It exposes one attribute, `with_cuda`, telling whether the CUDA kernels were compiled in.
#include <Python.h>

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "bioplaus_kernels operator library", -1, nullptr};
}

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef BIOPLAUS_WITH_CUDA
  Py_INCREF(Py_True);
  PyModule_AddObject(m, "with_cuda", Py_True);
#else
  Py_INCREF(Py_False);
  PyModule_AddObject(m, "with_cuda", Py_False);
#endif
  return m;
}
