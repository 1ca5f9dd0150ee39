//! `ferry-cachesim`: hit ratios of the file cache's policies on Zipf request
//! streams, by replaying the same streams through the very policy code the
//! server runs (`ferry_files::cache`), plus W-TinyLFU as a reference.
//! Used by `bench/cachesim.sh`; see docs/cache.md.

mod count_min;
mod replay;
mod tinylfu;
mod workload;
mod zipf;

use anyhow::{Result, bail};
use clap::Parser;
use ferry_files::cache::s3fifo::{S3Fifo, SizeUnit};
use ferry_files::cache::{CacheConfig, CachePolicyKind, EvictionPolicy, Limits, S3FifoParams, new_policy};

use crate::replay::replay;
use crate::tinylfu::{DEFAULT_WINDOW_PERCENT, WTinyLfu};
use crate::workload::Workload;

/// Bound on the requests of one stream (two u32 per request in memory).
const MAX_REQUESTS: usize = 100_000_000;
const MAX_FILES: usize = 10_000_000;

#[derive(Parser, Debug)]
#[command(about = "Hit ratios of ferry's cache policies on Zipf request streams")]
struct Args {
    /// Distinct files; file sizes are log-uniform in 1 KiB..1 MiB
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Measured requests per stream
    #[arg(long, default_value_t = 2_000_000)]
    requests: usize,
    /// Requests replayed before measuring, not counted
    #[arg(long, default_value_t = 500_000)]
    warmup: usize,
    /// Cache size in MiB
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// Seed of the sizes and of the streams
    #[arg(long, default_value_t = 20_240_601)]
    seed: u64,
    /// Zipf exponents, one stream each
    #[arg(long, value_delimiter = ',', default_value = "0.8,1.0,1.2")]
    alphas: Vec<f64>,
    /// Also report every S3-FIFO parameter variant that was tried
    #[arg(long)]
    variants: bool,
}

/// A policy under test, built fresh for every stream.
struct Contender {
    label: String,
    build: Box<dyn Fn(Limits) -> Box<dyn EvictionPolicy>>,
}

fn contenders() -> Vec<Contender> {
    let mut list: Vec<Contender> = CachePolicyKind::ALL
        .into_iter()
        .map(|kind| {
            let label = if kind == CachePolicyKind::default() { format!("{kind} (default)") } else { kind.to_string() };
            Contender { label, build: Box::new(move |l| new_policy(kind, l)) }
        })
        .collect();
    list.push(Contender {
        label: "w-tinylfu (reference)".into(),
        build: Box::new(|l| Box::new(WTinyLfu::new(l, DEFAULT_WINDOW_PERCENT))),
    });
    list.push(Contender {
        label: "tinylfu, no window (reference)".into(),
        build: Box::new(|l| Box::new(WTinyLfu::new(l, 0))),
    });
    list
}

/// The S3-FIFO settings tried while choosing the default, in the order they
/// were tried: the paper's, one knob at a time, then combinations. "B" is
/// the first combination that beat W-TinyLFU on every 64 MiB stream.
fn variants() -> Vec<Contender> {
    let paper = S3FifoParams::PAPER;
    let cost = |unit| S3FifoParams { size_unit: unit, promote_by_cost: true, age_by_cost: true, ..paper };
    let b = S3FifoParams { max_freq: 15, small_percent: 5, ghost_percent: 45, ..cost(SizeUnit::CacheFraction(256)) };
    let mean = |percent, ghost_percent| S3FifoParams { size_unit: SizeUnit::MeanPercent(percent), ghost_percent, ..b };
    let tries: Vec<(&str, S3FifoParams)> = vec![
        ("paper: small 10%, freq<=3, promote>=1, ghost 90%", paper),
        ("promote>=2", S3FifoParams { promote_min_freq: 2, ..paper }),
        ("small 5%", S3FifoParams { small_percent: 5, ..paper }),
        ("small 20%", S3FifoParams { small_percent: 20, ..paper }),
        ("freq<=7", S3FifoParams { max_freq: 7, ..paper }),
        ("freq<=15", S3FifoParams { max_freq: 15, ..paper }),
        ("ghost 200%", S3FifoParams { ghost_percent: 200, ..paper }),
        ("ghost 45%", S3FifoParams { ghost_percent: 45, ..paper }),
        ("small 5%, freq<=15, ghost 45%", S3FifoParams { small_percent: 5, max_freq: 15, ghost_percent: 45, ..paper }),
        (
            "small 5%, freq<=15, ghost 45%, promote>=2",
            S3FifoParams { small_percent: 5, max_freq: 15, ghost_percent: 45, promote_min_freq: 2, ..paper },
        ),
        (
            "promote by cost, unit max/64",
            S3FifoParams { size_unit: SizeUnit::CacheFraction(64), promote_by_cost: true, ..paper },
        ),
        (
            "promote by cost, unit max/256",
            S3FifoParams { size_unit: SizeUnit::CacheFraction(256), promote_by_cost: true, ..paper },
        ),
        (
            "age by cost, unit max/64, freq<=15",
            S3FifoParams { size_unit: SizeUnit::CacheFraction(64), age_by_cost: true, max_freq: 15, ..paper },
        ),
        (
            "age by cost, unit max/256, freq<=15",
            S3FifoParams { size_unit: SizeUnit::CacheFraction(256), age_by_cost: true, max_freq: 15, ..paper },
        ),
        ("both by cost, unit max/256, freq<=15", S3FifoParams { max_freq: 15, ..cost(SizeUnit::CacheFraction(256)) }),
        ("B = both by cost, unit max/256, freq<=15, small 5%, ghost 45%", b),
        ("B, ghost 90%", S3FifoParams { ghost_percent: 90, ..b }),
        ("B, ghost 25%", S3FifoParams { ghost_percent: 25, ..b }),
        ("B, ghost 10%", S3FifoParams { ghost_percent: 10, ..b }),
        ("B, ghost 0%", S3FifoParams { ghost_percent: 0, ..b }),
        ("B, unit max/128", S3FifoParams { size_unit: SizeUnit::CacheFraction(128), ..b }),
        ("B, unit max/512", S3FifoParams { size_unit: SizeUnit::CacheFraction(512), ..b }),
        ("B, freq<=7", S3FifoParams { max_freq: 7, ..b }),
        ("B, small 3%", S3FifoParams { small_percent: 3, ..b }),
        ("B, small 10%", S3FifoParams { small_percent: 10, ..b }),
        ("B, age by cost only", S3FifoParams { promote_by_cost: false, ..b }),
        ("B, unit 100% of mean, ghost 25%", mean(100, 25)),
        ("B, unit 200% of mean, ghost 25% (= default)", mean(200, 25)),
        ("B, unit 400% of mean, ghost 25%", mean(400, 25)),
        ("B, unit 200% of mean, ghost 45%", mean(200, 45)),
        ("B, unit 200% of mean, ghost 10%", mean(200, 10)),
        ("B, unit 300% of mean, ghost 10%", mean(300, 10)),
        ("B, unit 400% of mean, ghost 10%", mean(400, 10)),
        ("B, unit 400% of mean, ghost 15%", mean(400, 15)),
        ("B, unit 800% of mean, ghost 10%", mean(800, 10)),
    ];
    assert_eq!(mean(200, 25), S3FifoParams::default(), "the list names the default");
    tries
        .into_iter()
        .map(|(label, params)| Contender {
            label: format!("s3fifo {label}"),
            build: Box::new(move |l| Box::new(S3Fifo::new(l, params))),
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.files == 0 || args.files > MAX_FILES {
        bail!("--files must be between 1 and {MAX_FILES}");
    }
    if args.requests == 0 || args.requests + args.warmup > MAX_REQUESTS {
        bail!("--requests must be at least 1 and --requests + --warmup at most {MAX_REQUESTS}");
    }
    if let Some(a) = args.alphas.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
        bail!("every alpha must be a positive number, got {a}");
    }
    let config = CacheConfig { max_bytes: args.cache_mib.saturating_mul(1 << 20), ..CacheConfig::default() };
    let limits = Limits { max_bytes: config.max_bytes, max_entries: config.max_entries() };
    let mut all = contenders();
    if args.variants {
        all.extend(variants());
    }
    println!(
        "{} files of 1 KiB-1 MiB (log-uniform), cache {} MiB ({} entry slots), {} requests per stream after a \
         warm-up of {}, seed {}",
        args.files, args.cache_mib, limits.max_entries, args.requests, args.warmup, args.seed
    );
    println!();
    println!("| stream | policy | object hit % | byte hit % |");
    println!("|---|---|---:|---:|");
    for &alpha in &args.alphas {
        let w = Workload::generate(args.files, alpha, args.warmup, args.requests, args.seed);
        for c in &all {
            let mut policy = (c.build)(limits);
            let r = replay(policy.as_mut(), &w);
            println!("| zipf {alpha:.1} | {} | {:.2} | {:.2} |", c.label, 100.0 * r.object, 100.0 * r.byte);
        }
    }
    Ok(())
}
