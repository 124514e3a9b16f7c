// Declares the posemamba:: op schemas once. Device implementations register themselves next to their
// kernels (cpu/, cuda/); fake and autograd registrations live in Python (posemamba/ops.py).
#include <Python.h>
#include <torch/library.h>

// Importing posemamba._C runs the static registrations in this library; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

// TORCH_LIBRARY through one more macro, so that a namespace renamed by the preprocessor is expanded
// before TORCH_LIBRARY stringises it, as torch 2.11 and later do themselves (tests/test_portable_build.py
// builds these sources again with -Dposemamba=posemamba_portable; torch 2.10 and before registered that
// build's schemas under posemamba:: a second time, which aborts the process).
#define POSEMAMBA_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

POSEMAMBA_TORCH_LIBRARY(posemamba, m) {
  // out: the gated sum of all paths; out_ungated: that sum before the z gate (empty without z), kept
  // for the backward; chunk_states: each path's state before every kScanChunk-th step. span_lengths:
  // hints for the GPU's work split, per path (path p cut into spans of span_lengths[p] steps; 0: no
  // hint; empty: none for any path), never changing the result beyond rounding. save_for_backward
  // false (inference): out_ungated and chunk_states empty, neither computed nor written.
  // delta_proj_weight (P, D, R): mamba's low-rank step sizes, delta then (batch, P, R, L) and the raw
  // step sizes delta_proj_weight[p] @ delta[b, p], projected by the kernels as they read them.
  // channels_last_out: out comes as the transpose of a contiguous (batch, L, D) tensor (else contiguous).
  m.def(
      "multi_path_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor paths, "
      "Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? mix, bool delta_softplus, int[] span_lengths=[], "
      "bool save_for_backward=True, Tensor? delta_proj_weight=None, bool channels_last_out=False) "
      "-> (Tensor out, Tensor out_ungated, Tensor chunk_states)");
  // Gradients of every input; dD, dz, ddelta_bias and ddelta_proj_weight are empty where D, z,
  // delta_bias or delta_proj_weight is None. span_lengths: the forward's hints, for the GPU
  // backward's work split. channels_last_du, channels_last_dz: du, dz come as the transpose of a
  // contiguous (batch, L, D) tensor (else contiguous).
  m.def(
      "multi_path_scan_bwd(Tensor grad_out, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
      "Tensor paths, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? mix, Tensor out_ungated, "
      "Tensor chunk_states, bool delta_softplus, int[] span_lengths=[], Tensor? delta_proj_weight=None, "
      "bool channels_last_du=False, bool channels_last_dz=False) "
      "-> (Tensor du, Tensor ddelta, Tensor dA, Tensor dB, Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias, "
      "Tensor ddelta_proj_weight)");
  // The scan's own exp, log1p or softplus, elementwise, for testing their accuracy.
  m.def("_scan_math(Tensor x, str function) -> Tensor");
}
