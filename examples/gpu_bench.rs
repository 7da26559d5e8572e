//! `gpu_bench`: every cubecl kernel of mlinfra-kernels timed on a device against its roofline.
//!
//! ```text
//! $ scripts/setup-cuda-build     # once, where cubecl's LLVM bundle cannot be downloaded
//! $ cargo run --release -p mlinfra-examples --features cuda --example gpu_bench
//! device: cuda:0 ... copy 2850.1 GB/s (median of 50)
//! kernel                      shape                 median ms   p10 ms   p90 ms     GB/s  of copy  TFLOP/s   burn ms  vs burn
//! swiglu                      67108864              ...
//! {"device":"...","copy_gb_per_s":...,"kernels":[{"kernel":"swiglu",...}]}
//! ```
//!
//! For each kernel: the median and p10/p90 wall time of `--runs` launches (default 50), each
//! synchronised with the device, after two warm-up launches; the achieved GB/s and TFLOP/s
//! from the kernel's minimum traffic ([`mlinfra_kernels::roofline`]); the fraction of the
//! device-to-device copy bandwidth measured first with a copy kernel of the same access
//! pattern; and, where burn has the same operation, burn's composed ops on the same device
//! (its cubecl backend as this workspace builds it: without burn's `fusion` feature) and the
//! speed-up over them. Working sets are larger than an H100's 50 MB L2.
//!
//! `--device cuda` (the default when built with `--features cuda`) runs on CUDA device 0;
//! `--device wgpu` on the first Vulkan adapter. `--small` shrinks every shape (a smoke test on
//! Mesa's software Vulkan, whose figures are a CPU's, never a GPU's). The last line is one
//! JSON object with every figure.

use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cubecl::client::Client;
use half::f16;
use mlinfra_data::tensor::GgmlType;
use mlinfra_kernels::gemv::{DeviceWeights, quant_gemv, quant_gemv_q8_1, quantize_q8_1};
use mlinfra_kernels::loss::{Targets, cross_entropy, cross_entropy_with_grad_in_place};
use mlinfra_kernels::norm::{rms_norm, rms_norm_backward};
use mlinfra_kernels::paged_attention::{AttentionBatch, PagedKv, paged_attention};
use mlinfra_kernels::prefill::{PrefillRoutine, prefill_attention};
use mlinfra_kernels::roofline::{self, Timing, Traffic, time_runs};
use mlinfra_kernels::{DeviceBuffer, synchronize};
use serde_json::json;

struct Args {
    device: String,
    runs: usize,
    small: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        device: if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "wgpu"
        }
        .into(),
        runs: 50,
        small: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--device" => args.device = it.next().context("--device needs a value")?,
            "--runs" => {
                args.runs = it
                    .next()
                    .context("--runs needs a value")?
                    .parse()
                    .context("--runs")?
            }
            "--small" => args.small = true,
            other => bail!("unknown flag {other}; flags: --device cuda|wgpu --runs N --small"),
        }
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(args)
}

/// The kernels' client, burn's handle of the same device, and its name.
fn open(device: &str) -> anyhow::Result<(Client, Device, String)> {
    match device {
        "wgpu" => {
            let adapter = mlinfra_kernels::wgpu::default_device()?;
            let name = format!("wgpu/Vulkan: {}", adapter.adapter_name());
            Ok((
                adapter.client(),
                Device::from(adapter.device().clone()),
                name,
            ))
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let device =
                    cubecl::Device::cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: {e:?}"))?;
                let burn = Device::from(device.clone());
                Ok((device.client(), burn, "cuda:0".into()))
            }
            #[cfg(not(feature = "cuda"))]
            bail!("--device cuda: built without the `cuda` feature (cargo run --features cuda)")
        }
        other => bail!("--device {other}: expected cuda or wgpu"),
    }
}

/// Deterministic values in [-2, 2).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = mlinfra_test_utils::rng::SplitMix64::new(seed);
    (0..len).map(|_| rng.uniform(-2.0, 2.0) as f32).collect()
}

struct Report {
    copy_gb_per_s: f64,
    rows: Vec<serde_json::Value>,
}

impl Report {
    fn add(
        &mut self,
        kernel: &str,
        shape: &str,
        traffic: Traffic,
        timing: Timing,
        burn: Option<Timing>,
    ) {
        let gb = traffic.gb_per_s(timing.median);
        let ms = |t: f64| t * 1e3;
        let (burn_ms, speedup) = match burn {
            Some(b) => (
                format!("{:9.3}", ms(b.median)),
                format!("{:7.2}x", b.median / timing.median),
            ),
            None => ("        -".into(), "      -".into()),
        };
        println!(
            "{kernel:<28}{shape:<22}{:>10.3}{:>9.3}{:>9.3}{gb:>9.1}{:>8.0}%{:>9.3}{burn_ms}{speedup}",
            ms(timing.median),
            ms(timing.p10),
            ms(timing.p90),
            100.0 * gb / self.copy_gb_per_s,
            traffic.tflop_per_s(timing.median),
        );
        self.rows.push(json!({
            "kernel": kernel,
            "shape": shape,
            "bytes": traffic.bytes,
            "flops": traffic.flops,
            "median_ms": ms(timing.median),
            "p10_ms": ms(timing.p10),
            "p90_ms": ms(timing.p90),
            "runs": timing.runs,
            "gb_per_s": gb,
            "fraction_of_copy": gb / self.copy_gb_per_s,
            "tflop_per_s": traffic.tflop_per_s(timing.median),
            "burn_median_ms": burn.map(|b| ms(b.median)),
            "speedup_vs_burn": burn.map(|b| b.median / timing.median),
        }));
    }
}

/// Times burn's composed version of an operation (`op` returns the output to wait on).
fn time_burn<const D: usize>(
    device: &Device,
    runs: usize,
    op: impl Fn() -> Tensor<D>,
) -> anyhow::Result<Timing> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 2 {
        let started = std::time::Instant::now();
        let out = op();
        device.sync().map_err(|e| anyhow::anyhow!("burn: {e:?}"))?;
        drop(out);
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(Timing::from_samples(times))
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (client, burn_device, name) = open(&args.device)?;
    let (runs, small) = (args.runs, args.small);
    let pick = |full: usize, reduced: usize| if small { reduced } else { full };

    // 1 GiB copied (256 Mi f32 read, 256 Mi written).
    let (copy_gb_per_s, copy) = roofline::copy_bandwidth(&client, pick(256 << 20, 1 << 20), runs)?;
    println!(
        "device: {name}; copy {copy_gb_per_s:.1} GB/s (median of {}, p10 {:.3} ms, p90 {:.3} ms)",
        copy.runs,
        copy.p10 * 1e3,
        copy.p90 * 1e3
    );
    println!(
        "{:<28}{:<22}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>8}",
        "kernel",
        "shape",
        "median ms",
        "p10 ms",
        "p90 ms",
        "GB/s",
        "of copy",
        "TFLOP/s",
        "burn ms",
        "vs burn"
    );
    let mut report = Report {
        copy_gb_per_s,
        rows: Vec::new(),
    };
    let up = |v: &[f32]| DeviceBuffer::from_slice(&client, v);
    let burn_2d = |v: &[f32], rows: usize, cols: usize| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), &burn_device)
    };

    // SwiGLU, forward and backward, over 64 Mi values.
    let len = pick(64 << 20, 1 << 20);
    let (g, u, dh) = (values(len, 1), values(len, 2), values(len, 3));
    let (gd, ud, dhd) = (up(&g), up(&u), up(&dh));
    let timing = time_runs(&client, runs, || {
        mlinfra_kernels::elementwise::swiglu::swiglu_on_device(&client, &gd, &ud).map(drop)
    })?;
    let (gb, ub) = (burn_2d(&g, len / 1024, 1024), burn_2d(&u, len / 1024, 1024));
    let burn = time_burn(&burn_device, runs, || silu(gb.clone()) * ub.clone())?;
    report.add(
        "swiglu",
        &len.to_string(),
        roofline::swiglu(len, 4),
        timing,
        Some(burn),
    );
    let timing = time_runs(&client, runs, || {
        mlinfra_kernels::elementwise::swiglu::swiglu_backward_on_device(&client, &gd, &ud, &dhd)
            .map(drop)
    })?;
    report.add(
        "swiglu_backward",
        &len.to_string(),
        roofline::swiglu_backward(len, 4),
        timing,
        None,
    );
    drop((g, u, dh, gd, ud, dhd, gb, ub));

    // RMSNorm with the residual add, and its backward: 16,384 rows of 4,096.
    let (rows, cols) = (pick(16_384, 256), pick(4_096, 576));
    let (x, r, w) = (
        values(rows * cols, 4),
        values(rows * cols, 5),
        values(cols, 6),
    );
    let (xd, rd, wd) = (up(&x), up(&r), up(&w));
    let shape = format!("{rows}x{cols}");
    let timing = time_runs(&client, runs, || {
        rms_norm(&client, &xd, Some(&rd), &wd, 1e-5).map(drop)
    })?;
    let (xb, rb) = (burn_2d(&x, rows, cols), burn_2d(&r, rows, cols));
    let wb = Tensor::<1>::from_data(TensorData::new(w.clone(), [cols]), &burn_device);
    let burn = time_burn(&burn_device, runs, || {
        let s = xb.clone() + rb.clone();
        let rms = (s.clone().square().mean_dim(1) + 1e-5).sqrt();
        (s / rms) * wb.clone().unsqueeze()
    })?;
    report.add(
        "rms_norm_residual",
        &shape,
        roofline::rms_norm(rows, cols, true, 4),
        timing,
        Some(burn),
    );
    let out = rms_norm(&client, &xd, Some(&rd), &wd, 1e-5)?;
    let stream = out.stream.clone().context("a residual was added")?;
    let timing = time_runs(&client, runs, || {
        rms_norm_backward(&client, &xd, &stream, &wd, &out.rstd, None).map(drop)
    })?;
    report.add(
        "rms_norm_backward",
        &shape,
        roofline::rms_norm_backward(rows, cols, false, 4),
        timing,
        None,
    );
    drop((x, r, w, xd, rd, wd, xb, rb, wb, out, stream));

    // Cross-entropy over a 32,000-token vocabulary: the loss alone (beside burn's), and with
    // the gradient written over the logits.
    let (rows, vocab) = (pick(4_096, 16), pick(32_000, 4_096));
    let logits = values(rows * vocab, 7);
    let ids: Vec<i32> = (0..rows).map(|i| (i * 7_919 % vocab) as i32).collect();
    let targets = Targets::new(&client, &ids, vocab)?;
    let mut logits_d = up(&logits);
    let shape = format!("{rows}x{vocab}");
    let timing = time_runs(&client, runs, || {
        cross_entropy(&client, &logits_d, &targets).map(drop)
    })?;
    let logits_b = burn_2d(&logits, rows, vocab);
    let targets_b = Tensor::<1, Int>::from_data(
        TensorData::new(
            ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
            [rows],
        ),
        &burn_device,
    );
    let loss = burn::nn::loss::CrossEntropyLossConfig::new().init(&burn_device);
    let burn = time_burn(&burn_device, runs, || {
        loss.forward(logits_b.clone(), targets_b.clone())
    })?;
    report.add(
        "cross_entropy",
        &shape,
        roofline::cross_entropy(rows, vocab, false, 4),
        timing,
        Some(burn),
    );
    // In place: each run overwrites the previous run's gradient (the same traffic).
    let timing = time_runs(&client, runs, || {
        cross_entropy_with_grad_in_place(&client, &mut logits_d, &targets, 1.0 / rows as f32)
            .map(drop)
    })?;
    report.add(
        "cross_entropy_grad_in_place",
        &shape,
        roofline::cross_entropy(rows, vocab, true, 4),
        timing,
        None,
    );
    drop((logits, logits_d, logits_b, targets_b));

    // Paged decode attention: 64 sequences at 4,096 positions, 32 query heads over 8 KV heads
    // of 128 (Llama-3-8B's), an f16 cache in blocks of 16.
    let (seqs, context, heads, kv_heads, head_dim, block) = (
        pick(64, 4),
        pick(4_096, 512),
        pick(32, 9),
        pick(8, 3),
        pick(128, 64),
        16,
    );
    let blocks_per_seq = context / block;
    let cache_len = seqs * context * kv_heads * head_dim;
    let half = |seed| -> Vec<f16> {
        values(cache_len, seed)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    };
    let cache = PagedKv {
        k: DeviceBuffer::from_slice(&client, &half(8)),
        v: DeviceBuffer::from_slice(&client, &half(9)),
        kv_heads,
        head_dim,
        block_size: block,
    };
    // Each sequence's blocks interleaved with the others' (a pool after churn).
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|s| (0..blocks_per_seq).map(|b| (b * seqs + s) as u32).collect())
        .collect();
    let table_refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    let decode: Vec<(usize, usize)> = (0..seqs).map(|s| (s, context - 1)).collect();
    let batch = AttentionBatch::new(&client, &table_refs, &decode, block)?;
    let q = up(&values(seqs * heads * head_dim, 10));
    let scale = 1.0 / (head_dim as f32).sqrt();
    let timing = time_runs(&client, runs, || {
        paged_attention(&client, &q, heads, &cache, &batch, scale).map(drop)
    })?;
    report.add(
        "paged_decode_attention_f16",
        &format!("{seqs}x{context} {heads}/{kv_heads}x{head_dim}"),
        roofline::paged_attention(&vec![context; seqs], heads, kv_heads, head_dim, 2, 4),
        timing,
        None,
    );

    // Prefill of one prompt over sequence 0's blocks, f32 queries: cubek's flash attention
    // (the context gathered out of the paged cache, then read once per query tile) beside the
    // paged kernel (each token reads its whole context). The same FLOPs; GB/s from each one's
    // own minimum traffic.
    let prompt = pick(context, 256);
    let q = up(&values(prompt * heads * head_dim, 13));
    let shape = format!("{prompt} {heads}/{kv_heads}x{head_dim}");
    let mut routine = PrefillRoutine::for_device(&client);
    let flash = || prefill_attention(&client, &q, heads, &cache, &tables[0], prompt, routine);
    if let Err(mlinfra_kernels::Error::Unavailable { reason, .. }) = flash() {
        println!("prefill: {routine:?} cannot run here ({reason}); the unit routine instead");
        routine = PrefillRoutine::Unit;
    }
    let flash = time_runs(&client, runs, || {
        prefill_attention(&client, &q, heads, &cache, &tables[0], prompt, routine).map(drop)
    })?;
    report.add(
        &format!("prefill_cubek_{routine:?}_f16").to_lowercase(),
        &shape,
        roofline::prefill_attention(prompt, prompt, (heads, kv_heads, head_dim), 2, 4),
        flash,
        None,
    );
    let positions: Vec<(usize, usize)> = (0..prompt).map(|p| (0, p)).collect();
    let batch = AttentionBatch::new(&client, &table_refs, &positions, block)?;
    let paged = time_runs(&client, runs, || {
        paged_attention(&client, &q, heads, &cache, &batch, scale).map(drop)
    })?;
    let attended: Vec<usize> = (1..=prompt).collect();
    report.add(
        "prefill_paged_f16",
        &shape,
        roofline::paged_attention(&attended, heads, kv_heads, head_dim, 2, 4),
        paged,
        None,
    );
    println!(
        "prefill: cubek's flash attention {:.2}x the paged kernel",
        paged.median / flash.median
    );
    drop((cache, batch, q));

    // Dequantize-GEMV, one token through a 16,384 x 8,192 matrix, per format, f32 and Q8_1
    // activations. Valid blocks of arbitrary codes: the cost does not depend on the values.
    let (rows, cols) = (pick(16_384, 1_024), pick(8_192, 1_024));
    let x = up(&values(cols, 11));
    for format in DeviceWeights::FORMATS {
        let block_bytes = format.type_size();
        let mut rng = mlinfra_test_utils::rng::SplitMix64::new(12);
        let mut bytes: Vec<u8> = (0..rows * cols / 32 * block_bytes)
            .map(|_| rng.next_u64() as u8)
            .collect();
        for block in bytes.chunks_exact_mut(block_bytes) {
            block[..2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
            if format == GgmlType::Q4_1 {
                block[2..4].copy_from_slice(&f16::from_f32(-0.05).to_le_bytes());
            }
        }
        let weights = DeviceWeights::upload(&client, format, rows, cols, &bytes)?;
        let shape = format!("{rows}x{cols}");
        let traffic = roofline::quant_gemv(rows, cols, 1, weights.resident_bytes(), 4);
        let timing = time_runs(&client, runs, || {
            quant_gemv(&client, &weights, &x).map(drop)
        })?;
        report.add(
            &format!("quant_gemv_{}_f32", format.name()),
            &shape,
            traffic,
            timing,
            None,
        );
        let timing = time_runs(&client, runs, || {
            let quantized = quantize_q8_1(&client, &x, cols)?;
            quant_gemv_q8_1(&client, &weights, &quantized).map(drop)
        })?;
        report.add(
            &format!("quant_gemv_{}_q8_1", format.name()),
            &shape,
            traffic,
            timing,
            None,
        );
    }
    synchronize(&client)?;
    println!(
        "{}",
        json!({
            "device": name,
            "small": small,
            "runs": runs,
            "copy_gb_per_s": copy_gb_per_s,
            "kernels": report.rows,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpu_bench: {error:#}");
            ExitCode::from(2)
        }
    }
}
