// The CUDA kernels compiled for the host and run by simt_emulation.h, as a small Python module for
// tests/test_cuda_emulation.py (built there with torch.utils.cpp_extension.load, never installed).
// Its functions are the CUDA implementations of the posemamba:: ops (scan_cuda_ops.h) taking CPU tensors
// (index checks left to device asserts, as on a GPU); simt_selftest runs the emulation's own
// test kernels (simt_selftest.h).
#include <torch/extension.h>

#include "../cuda/scan_backward_cuda.cuh"
#include "../cuda/scan_cuda_ops.h"
#include "../cuda/scan_forward_cuda.cuh"
#include "../cuda/scan_warp_spans_backward_cuda.cuh"
#include "simt_selftest.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("multi_path_scan_fwd", &posemamba::cuda::scan_forward,
        "posemamba::multi_path_scan_fwd by the CUDA kernels, emulated on the host", pybind11::arg("u"),
        pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"), pybind11::arg("paths"),
        pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"), pybind11::arg("mix"),
        pybind11::arg("delta_softplus"), pybind11::arg("span_lengths"), pybind11::arg("save_for_backward") = true,
        pybind11::arg("delta_proj_weight") = pybind11::none(), pybind11::arg("channels_last_out") = false);
  m.def("multi_path_scan_bwd", &posemamba::cuda::scan_backward,
        "posemamba::multi_path_scan_bwd by the CUDA kernels, emulated on the host", pybind11::arg("grad_out"),
        pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
        pybind11::arg("paths"), pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"),
        pybind11::arg("mix"), pybind11::arg("out_ungated"), pybind11::arg("chunk_states"),
        pybind11::arg("delta_softplus"), pybind11::arg("span_lengths"),
        pybind11::arg("delta_proj_weight") = pybind11::none(), pybind11::arg("channels_last_du") = false,
        pybind11::arg("channels_last_dz") = false);
  m.def("simt_selftest", &posemamba::simt_selftest::run, "runs one of the emulation's own test kernels");
  m.def("set_schedule_reversed", [](bool reversed) { posemamba::simt::schedule_reversed = reversed; },
        "the order in which a launch's blocks run and a block's threads take turns between barriers: "
        "reversed, or in index order");
}
