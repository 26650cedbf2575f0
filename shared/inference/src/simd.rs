//! The few vector operations Prism's channels-last kernels are written in ([`Vector`]), for
//! AVX-512, AVX2 with FMA, and plain floats (four lanes for CPUs without AVX2, one for the
//! channels past the last whole vector). Why not plain arrays left to the compiler to
//! vectorise: in the GEMM's kernel it chose to gather along the rows instead of broadcasting
//! each input value, four times slower; intrinsics leave it no choice.

use crate::kernels::Activation;

/// The widest vector's lanes.
const MAX_LANES: usize = 16;

/// The vector operations the kernels are written in, one implementation per instruction set.
pub(crate) trait Vector: Copy {
    const LANES: usize;
    /// # Safety
    /// `LANES` values readable from `from`; the CPU has the instruction set.
    unsafe fn load(from: *const f32) -> Self;
    /// # Safety
    /// `LANES` values writable at `to`; the CPU has the instruction set.
    unsafe fn store(self, to: *mut f32);
    /// # Safety
    /// The CPU has the instruction set (as for all below).
    unsafe fn splat(value: f32) -> Self;
    /// `self * factor + addend`, lane by lane.
    unsafe fn mul_add(self, factor: Self, addend: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn clamp(self, low: f32, high: f32) -> Self;

    #[inline(always)]
    unsafe fn activate(self, activation: Activation) -> Self {
        // SAFETY: as the caller's.
        unsafe {
            match activation {
                Activation::Relu6 => self.clamp(0.0, 6.0),
                Activation::Identity => self,
                Activation::Silu => {
                    let mut values = [0.0f32; MAX_LANES];
                    self.store(values.as_mut_ptr());
                    activation.activate(&mut values[..Self::LANES]);
                    Self::load(values.as_ptr())
                }
            }
        }
    }
}

/// Four lanes of plain floats, for CPUs without AVX2.
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; 4]);

impl Vector for Portable {
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn load(from: *const f32) -> Self {
        // SAFETY: the caller's.
        Self(unsafe { from.cast::<[f32; 4]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, to: *mut f32) {
        // SAFETY: the caller's.
        unsafe { to.cast::<[f32; 4]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Self([value; 4])
    }
    #[inline(always)]
    unsafe fn mul_add(self, factor: Self, addend: Self) -> Self {
        Self(std::array::from_fn(|lane| {
            self.0[lane] * factor.0[lane] + addend.0[lane]
        }))
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Self(std::array::from_fn(|lane| self.0[lane] + other.0[lane]))
    }
    #[inline(always)]
    unsafe fn clamp(self, low: f32, high: f32) -> Self {
        Self(self.0.map(|value| value.clamp(low, high)))
    }
}

/// One lane: the channels past the last whole vector.
#[derive(Clone, Copy)]
pub(crate) struct Scalar(f32);

impl Vector for Scalar {
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn load(from: *const f32) -> Self {
        // SAFETY: the caller's.
        Self(unsafe { from.read() })
    }
    #[inline(always)]
    unsafe fn store(self, to: *mut f32) {
        // SAFETY: the caller's.
        unsafe { to.write(self.0) }
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Self(value)
    }
    #[inline(always)]
    unsafe fn mul_add(self, factor: Self, addend: Self) -> Self {
        Self(self.0 * factor.0 + addend.0)
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }
    #[inline(always)]
    unsafe fn clamp(self, low: f32, high: f32) -> Self {
        Self(self.0.clamp(low, high))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::Vector;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    // SAFETY (every method): the caller's, and the CPU has AVX-512F.
    impl Vector for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(from: *const f32) -> Self {
            Self(unsafe { _mm512_loadu_ps(from) })
        }
        #[inline(always)]
        unsafe fn store(self, to: *mut f32) {
            unsafe { _mm512_storeu_ps(to, self.0) }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Self(unsafe { _mm512_set1_ps(value) })
        }
        #[inline(always)]
        unsafe fn mul_add(self, factor: Self, addend: Self) -> Self {
            Self(unsafe { _mm512_fmadd_ps(self.0, factor.0, addend.0) })
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Self(unsafe { _mm512_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn clamp(self, low: f32, high: f32) -> Self {
            unsafe {
                Self(_mm512_min_ps(
                    _mm512_max_ps(self.0, _mm512_set1_ps(low)),
                    _mm512_set1_ps(high),
                ))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    // SAFETY (every method): the caller's, and the CPU has AVX2 and FMA.
    impl Vector for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(from: *const f32) -> Self {
            Self(unsafe { _mm256_loadu_ps(from) })
        }
        #[inline(always)]
        unsafe fn store(self, to: *mut f32) {
            unsafe { _mm256_storeu_ps(to, self.0) }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Self(unsafe { _mm256_set1_ps(value) })
        }
        #[inline(always)]
        unsafe fn mul_add(self, factor: Self, addend: Self) -> Self {
            Self(unsafe { _mm256_fmadd_ps(self.0, factor.0, addend.0) })
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Self(unsafe { _mm256_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        unsafe fn clamp(self, low: f32, high: f32) -> Self {
            unsafe {
                Self(_mm256_min_ps(
                    _mm256_max_ps(self.0, _mm256_set1_ps(low)),
                    _mm256_set1_ps(high),
                ))
            }
        }
    }
}
