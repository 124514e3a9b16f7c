// Run-time ISA choice for the CPU kernels' hot loops, without a build that only runs where it was built.
//
// POSEMAMBA_CPU_MULTIVERSION marks a function for GCC/Clang function multi-versioning: the compiler
// emits one clone per listed ISA (each with its own auto-vectorisation of the inlined scan math) and
// picks one at load time by the CPU's features. Elsewhere it is empty and the function is compiled for
// the baseline ISA only.
#pragma once

// Clones are chosen by ISA level (features), not by CPU model: "arch=haswell" would be skipped on an
// AMD CPU with the same AVX2 and FMA. GCC 12 resolves x86-64-v3 (AVX2, FMA) and x86-64-v4 (AVX-512);
// older compilers get plain feature names.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(POSEMAMBA_NO_MULTIVERSION)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define POSEMAMBA_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define POSEMAMBA_CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define POSEMAMBA_CPU_MULTIVERSION
#endif

// The bodies that a multi-versioned function calls must be inlined into each clone, or they are
// compiled once for the baseline ISA and every clone just calls that.
#if defined(__GNUC__) || defined(__clang__)
#define POSEMAMBA_RESTRICT __restrict__
#define POSEMAMBA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define POSEMAMBA_RESTRICT
#define POSEMAMBA_ALWAYS_INLINE inline
#endif
