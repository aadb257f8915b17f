# The SIMD level the kernels' array code runs at (rc_activations.h), and the
# import guard of a forced single-level build (CMake RNNCORE_SIMD, a test
# build): every kernel module calls require_simd() when it is imported, so a
# build for a level this CPU lacks fails with a clear ImportError instead of
# an illegal instruction in the first kernel call.

cdef extern from "rc_activations.h" nogil:
    int rc_simd_tier()
    int rc_cpu_tier()
    bint rc_simd_supported()
    const char *rc_simd_level()


cdef inline int require_simd() except -1:
    if not rc_simd_supported():
        raise ImportError(
            f"rnncore's kernels were built for one SIMD level only ({rc_simd_level().decode()}: "
            "-Ccmake.define.RNNCORE_SIMD, a test build) and this CPU lacks it; reinstall "
            "rnncore without that option")
    return 0
