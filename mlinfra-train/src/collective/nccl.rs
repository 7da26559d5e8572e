//! [`NcclCollective`]: ranks on NVIDIA GPUs over NCCL, through cudarc (feature `cuda`).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nccl::result::NcclStatus;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::{Collective, check_len, check_root, shard_range, unpad_blocks};
use crate::{Error, Result};

/// The 128-byte identity of an NCCL group: made by one rank, shared with the others.
#[derive(Debug, Clone, Copy)]
pub struct NcclId(Id);

impl NcclId {
    /// A fresh group identity (rank 0 makes it).
    ///
    /// # Errors
    ///
    /// [`Error::CollectiveAborted`] when NCCL cannot be loaded or fails.
    pub fn new() -> Result<Self> {
        Id::new()
            .map(NcclId)
            .map_err(|e| nccl_error("ncclGetUniqueId", e))
    }

    /// The bytes to send to the other ranks.
    pub fn to_bytes(&self) -> [u8; 128] {
        self.0.internal().map(|c| c as u8)
    }

    /// The identity rank 0 sent.
    pub fn from_bytes(bytes: [u8; 128]) -> Self {
        NcclId(Id::uninit(bytes.map(|b| b as core::ffi::c_char)))
    }
}

/// One rank of an NCCL group.
///
/// The [`Collective`] trait works on host slices (the flat parameter and gradient vectors of
/// [`ParamLayout`](crate::ParamLayout)), so each operation copies its input to the rank's GPU,
/// runs the NCCL collective on the rank's stream, and copies the result back. The device
/// buffers are kept and reused between calls. Like MPI, NCCL's reduce-scatter and all-gather
/// want equal blocks; the short last shard is padded.
///
/// Two ways to build a group:
/// - [`NcclCollective::for_devices`]: every GPU of this process, one handle per GPU, to move
///   into one thread each (like [`ThreadGroup`](super::ThreadGroup));
/// - [`NcclCollective::from_rank`]: one process per GPU; rank 0 makes an [`NcclId`] with
///   [`NcclId::new`] and hands its 128 bytes to the others (over MPI, a file, the launcher's
///   environment) before every rank joins.
///
/// **Failures.** An NCCL or CUDA error is returned as [`Error::CollectiveAborted`] naming the
/// operation. A rank that dies leaves NCCL peers blocked on the device; set
/// `NCCL_ASYNC_ERROR_HANDLING`/timeouts in the launcher, and supervise the whole job.
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// Device staging buffers, grown on demand.
    send: Option<CudaSlice<f32>>,
    recv: Option<CudaSlice<f32>>,
    /// Host scratch for padded blocks.
    host: Vec<f32>,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.world_size())
            .field("device", &self.stream.context().ordinal())
            .finish_non_exhaustive()
    }
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; every call here goes through `&mut self` (or `Drop`), so moving the handle to
// another thread cannot make two overlap. The stream and device buffers are Send already.
unsafe impl Send for NcclCollective {}

impl NcclCollective {
    /// Rank `rank` of `world`, on GPU `device`, joining the group `id` (blocks until every
    /// rank has joined).
    ///
    /// # Errors
    ///
    /// [`Error::CollectiveAborted`] when the GPU or NCCL fails.
    pub fn from_rank(device: usize, rank: usize, world: usize, id: NcclId) -> Result<Self> {
        let context = CudaContext::new(device).map_err(|e| cuda_error("opening the GPU", e))?;
        let stream = context.default_stream();
        let comm = Comm::from_rank(Arc::clone(&stream), rank, world, id.0)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(Self::wrap(comm))
    }

    /// One rank per GPU in `devices`, all in this process, in rank order.
    ///
    /// # Errors
    ///
    /// [`Error::CollectiveAborted`] when a GPU or NCCL fails.
    pub fn for_devices(devices: &[usize]) -> Result<Vec<Self>> {
        let streams = devices
            .iter()
            .map(|&device| {
                CudaContext::new(device)
                    .map(|context| context.default_stream())
                    .map_err(|e| cuda_error("opening a GPU", e))
            })
            .collect::<Result<Vec<_>>>()?;
        let comms = Comm::from_devices(streams).map_err(|e| nccl_error("ncclCommInitAll", e))?;
        Ok(comms.into_iter().map(Self::wrap).collect())
    }

    fn wrap(comm: Comm) -> Self {
        NcclCollective {
            stream: comm.stream(),
            comm,
            send: None,
            recv: None,
            host: Vec::new(),
        }
    }

    /// Copies `host` into the send buffer and makes the receive buffer `recv_len` long.
    fn stage(&mut self, host: &[f32], recv_len: usize) -> Result<()> {
        self.send = Some(
            self.stream
                .clone_htod(host)
                .map_err(|e| cuda_error("copying to the GPU", e))?,
        );
        if self.recv.as_ref().is_none_or(|r| r.len() != recv_len) {
            self.recv = Some(
                self.stream
                    .alloc_zeros::<f32>(recv_len)
                    .map_err(|e| cuda_error("allocating on the GPU", e))?,
            );
        }
        Ok(())
    }

    /// Copies the receive buffer into `out` (waits for the stream).
    fn unstage(&mut self, out: &mut [f32]) -> Result<()> {
        let recv = self.recv.as_ref().expect("staged before");
        self.stream
            .memcpy_dtoh(recv, out)
            .map_err(|e| cuda_error("copying from the GPU", e))?;
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("waiting for the GPU", e))
    }

    /// Copies `buffer` to the GPU, runs `operation` on it in place, and copies it back.
    fn in_place<T: NcclType + DeviceRepr>(
        &mut self,
        buffer: &mut [T],
        operation: impl FnOnce(&Comm, &mut CudaSlice<T>) -> Result<NcclStatus>,
    ) -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let mut device = self
            .stream
            .clone_htod(&*buffer)
            .map_err(|e| cuda_error("copying to the GPU", e))?;
        operation(&self.comm, &mut device)?;
        self.stream
            .memcpy_dtoh(&device, buffer)
            .map_err(|e| cuda_error("copying from the GPU", e))?;
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("waiting for the GPU", e))
    }

    fn block(&self, len: usize) -> usize {
        len.div_ceil(self.comm.world_size())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce(&mut self, buffer: &mut [f32]) -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.stage(buffer, buffer.len())?;
        let (send, recv) = (self.send.as_ref(), self.recv.as_mut());
        self.comm
            .all_reduce(send.expect("staged"), recv.expect("staged"), &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        self.unstage(buffer)
    }

    fn all_reduce_f64(&mut self, buffer: &mut [f64]) -> Result<()> {
        self.in_place(buffer, |comm, device| {
            comm.all_reduce_in_place(device, &ReduceOp::Sum)
                .map_err(|e| nccl_error("ncclAllReduce", e))
        })
    }

    fn reduce_scatter(&mut self, input: &[f32], shard: &mut [f32]) -> Result<()> {
        let (rank, world) = (self.rank(), self.world());
        let range = shard_range(input.len(), rank, world);
        check_len("reduce_scatter shard", shard.len(), range.len())?;
        let block = self.block(input.len());
        if block == 0 {
            return Ok(());
        }
        let mut padded = std::mem::take(&mut self.host);
        padded.clear();
        padded.extend_from_slice(input);
        padded.resize(block * world, 0.0);
        self.stage(&padded, block)?;
        let (send, recv) = (self.send.as_ref(), self.recv.as_mut());
        self.comm
            .reduce_scatter(send.expect("staged"), recv.expect("staged"), &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclReduceScatter", e))?;
        padded.resize(block, 0.0);
        self.unstage(&mut padded)?;
        shard.copy_from_slice(&padded[..range.len()]);
        self.host = padded;
        Ok(())
    }

    fn all_gather(&mut self, shard: &[f32], output: &mut [f32]) -> Result<()> {
        let (rank, world) = (self.rank(), self.world());
        check_len(
            "all_gather shard",
            shard.len(),
            shard_range(output.len(), rank, world).len(),
        )?;
        let block = self.block(output.len());
        if block == 0 {
            return Ok(());
        }
        let mut padded = std::mem::take(&mut self.host);
        padded.clear();
        padded.extend_from_slice(shard);
        padded.resize(block, 0.0);
        self.stage(&padded, block * world)?;
        let (send, recv) = (self.send.as_ref(), self.recv.as_mut());
        self.comm
            .all_gather(send.expect("staged"), recv.expect("staged"))
            .map_err(|e| nccl_error("ncclAllGather", e))?;
        padded.resize(block * world, 0.0);
        self.unstage(&mut padded)?;
        unpad_blocks(&padded, block, output, world);
        self.host = padded;
        Ok(())
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world())?;
        let root = i32::try_from(root).expect("NCCL ranks fit in an int");
        self.in_place(buffer, |comm, device| {
            comm.broadcast_in_place(device, root)
                .map_err(|e| nccl_error("ncclBroadcast", e))
        })
    }

    fn barrier(&mut self) -> Result<()> {
        // NCCL has no barrier; a one-element all-reduce is the usual stand-in.
        self.all_reduce_f64(&mut [0.0])
    }
}

fn nccl_error(operation: &str, error: cudarc::nccl::result::NcclError) -> Error {
    Error::CollectiveAborted {
        reason: format!("{operation} failed: {error:?}").into(),
    }
}

fn cuda_error(what: &str, error: cudarc::driver::DriverError) -> Error {
    Error::CollectiveAborted {
        reason: format!("{what} failed: {error}").into(),
    }
}
