//! Typed buffers in device memory: what the kernels read and write, so that a chain of
//! kernels (a layer's norm, projection, attention) runs without a host round trip between
//! launches.
//!
//! cubecl hands out untyped [`Handle`](cubecl::server::Handle)s; a [`DeviceBuffer`] pairs one
//! with its element type and length, which is what the kernels' shape checks and the
//! `unsafe` launch arguments need.

use std::marker::PhantomData;

use cubecl::prelude::*;

use crate::{Error, Result};

/// The float element types the kernels take: f32 everywhere; f16 and bf16 where the runtime
/// has them ([`Error::Unsupported`] where it does not: lavapipe has f16, no bf16). The type is a
/// comptime choice (each kernel compiles per element type); sums run in f32 whatever it is.
pub trait Element: Float + CubeElement {}
impl Element for f32 {}
impl Element for half::f16 {}
impl Element for half::bf16 {}

/// `len` values of `T` in device memory.
#[derive(Debug, Clone)]
pub struct DeviceBuffer<T> {
    handle: cubecl::server::Handle,
    len: usize,
    element: PhantomData<T>,
}

impl<T: CubeElement> DeviceBuffer<T> {
    /// Copies `values` to the device.
    pub fn from_slice(client: &Client, values: &[T]) -> Self {
        Self {
            handle: client.create_from_slice(T::as_bytes(values)),
            len: values.len(),
            element: PhantomData,
        }
    }

    /// A buffer of `len` values with every bit set: NaN in f32, f16 and bf16 alike, so an
    /// element a kernel fails to write cannot pass for a result. Outputs start this way.
    pub fn poisoned(client: &Client, len: usize) -> Self {
        Self {
            handle: client.create_from_slice(&vec![0xFF; len * size_of::<T>()]),
            len,
            element: PhantomData,
        }
    }

    /// A buffer over memory the caller allocated (a burn tensor's): `handle` must hold at least
    /// `len` values of `T` (checked: a shorter handle is a bug in the caller, not a launch
    /// reading past it).
    #[cfg(feature = "fused")]
    pub(crate) fn from_handle(handle: cubecl::server::Handle, len: usize) -> Self {
        assert!(
            handle.size() as usize >= len * size_of::<T>(),
            "a handle of {} bytes for {len} values of {} bytes",
            handle.size(),
            size_of::<T>()
        );
        Self {
            handle,
            len,
            element: PhantomData,
        }
    }

    /// The memory, for a burn tensor to take over.
    #[cfg(feature = "fused")]
    pub(crate) fn into_handle(self) -> cubecl::server::Handle {
        self.handle
    }

    /// The memory, for launches that take tensors (cubek's) rather than slices.
    #[cfg(feature = "prefill")]
    pub(crate) fn handle(&self) -> &cubecl::server::Handle {
        &self.handle
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits for the kernels writing it and copies it back.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the runtime fails to run a kernel or read the buffer back;
    /// `kernel` names what is read, for the message.
    pub fn to_vec(&self, client: &Client, kernel: &'static str) -> Result<Vec<T>> {
        let bytes = client
            .read_one(self.handle.clone())
            .map_err(|source| Error::Device {
                kernel,
                source: Box::new(source),
            })?;
        Ok(T::from_bytes(&bytes).to_vec())
    }

    /// The launch argument. Sound because the handle was allocated for exactly `len` values
    /// of `T`, which is what `from_raw_parts` asks.
    pub(crate) fn arg(&self) -> BufferArg {
        // SAFETY: the handle holds exactly `self.len` elements of `T` (see the constructors).
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

/// Waits until every kernel launched on `client` has finished (benchmarks time launches this
/// way).
///
/// # Errors
///
/// [`Error::Device`] when the runtime reports a failure.
pub fn synchronize(client: &Client) -> Result<()> {
    cubecl::future::block_on(client.sync()).map_err(|source| Error::Device {
        kernel: "synchronize",
        source: Box::new(source),
    })
}

/// Whether `client`'s runtime has the element type `E` (f32 always; f16 and bf16 depend on
/// the device).
pub fn supports<E: Element>(client: &Client) -> bool {
    client.properties().supports_type(E::elem_type_native())
}

/// `Ok` when the runtime has the element type `E`.
pub(crate) fn supported<E: Element>(client: &Client, kernel: &'static str) -> Result<()> {
    if supports::<E>(client) {
        Ok(())
    } else {
        Err(Error::Unsupported {
            kernel,
            element: std::any::type_name::<E>(),
        })
    }
}

/// `Err(Error::Shape)` with the reason unless `holds`.
pub(crate) fn require(
    holds: bool,
    kernel: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<()> {
    if holds {
        Ok(())
    } else {
        Err(Error::Shape {
            kernel,
            reason: reason().into(),
        })
    }
}
