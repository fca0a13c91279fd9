//! `srcode`: the command-line front of the srcode toolkit. The binary is thin: it parses
//! arguments, sets up logging, and calls library functions that tests call too.

mod bench;
mod data_cmd;
mod eval_cmd;
mod generate;
mod home;
mod model_cmd;
mod report_cmd;
mod reward_cmd;
mod sandbox_cmd;
mod scan_cmd;
mod serve_cmd;
mod train_cmd;

use anyhow::Result;

/// Tensors of tens of megabytes are allocated and freed on every step; glibc hands those back to
/// the kernel each time, and the page faults of re-touching them cost ~5% of a training step.
/// mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

/// Teach code language models to write secure code, with token-level rewards.
///
/// srcode builds secure-repair datasets from real vulnerability fixes, trains a policy with SFT
/// and token-level-reward RL, and evaluates both security and functionality. This build has the
/// model runtime (fetching the default model, inspecting models, generating, benchmarks), the
/// vulnerability analyser (`scan`), token-level rewards (`reward`), the Vul2Safe dataset
/// builder (`data`), training (`train sft`, `train rl`), evaluation (`eval`), the
/// sandbox for generated code (`sandbox`) and the model and reward server (`serve`).
#[derive(Parser)]
#[command(name = "srcode", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace) or a tracing directive.
    #[arg(long, global = true, default_value = "warn", env = "SRCODE_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and inspect models (the embedded default: SmolLM2-135M-Instruct GGUF).
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Generate text from a prompt with a local model (GGUF file or Hugging Face directory).
    Generate(generate::GenerateArgs),
    /// Measure the runtime on this machine: decode speed and training-step speed.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Find vulnerabilities in C, C++, Python, Java and JavaScript code or LLM answers.
    ///
    /// Exit status: 0 no findings, 1 findings, 2 error. Findings carry exact byte spans.
    Scan(scan_cmd::ScanArgs),
    /// Token-level rewards for a file of rollouts (analyser findings, repair-pair patterns,
    /// instance checks), with an optional per-token HTML heat map.
    Reward(reward_cmd::RewardArgs),
    /// Vul2Safe: build the PrimeVul+ dataset from real vulnerability fixes with a
    /// self-reflecting teacher (ingest, repair, implicit prompts; resumable).
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Evaluate a model (local or an OpenAI-compatible endpoint) on security and functionality
    /// benchmarks: vulnerable rate, pass@k, func-sec@k; resumable, with HTML reports.
    ///
    /// `srcode eval --bench sven`, `srcode eval --bench humaneval-pro`, and
    /// `srcode eval compare RUN_A RUN_B ...` to lay runs side by side.
    Eval(eval_cmd::EvalArgs),
    /// Run untrusted C or Python code isolated, with a JSON verdict.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// SRCode training: supervised fine-tuning on PrimeVul+ (resumable).
    #[command(subcommand)]
    Train(train_cmd::TrainCommand),
    /// Serve a local model over the OpenAI API and srcode's token-level reward to other
    /// trainers (verl, OpenRLHF, TRL): /v1/chat/completions, /v1/completions, /v1/rewards/token,
    /// /get_reward, /v1/scan, /health, /metrics.
    Serve(serve_cmd::ServeArgs),
    /// One page for a run of the method: the before/after table of evaluations (base, SFT, RL)
    /// with bootstrapped differences, the RL training curves, and held-out answers with their
    /// per-token reward heat maps (report.html, and report.md for a README).
    Report(report_cmd::ReportArgs),
}

/// Training frees and re-allocates gigabytes of activations and gradients every step. By default
/// mimalloc hands freed memory back to the OS after 10 ms, and touching it again costs a page
/// fault and a zeroed page per 4 KiB (2 MiB with THP): measured on a 2-core VM, half of an RL
/// step was the kernel zeroing pages (`clear_page_erms`). Keeping freed memory in the process
/// made steady-state GRPO steps 2× faster (41.5 s → 21.2 s for 4 rollouts × 64 tokens) at the
/// same peak RSS. Decoding frees and re-allocates its per-token buffers every ~10 ms, right at
/// the default delay: there freed memory is kept for a second (3% of a batch-8 decode profile
/// was page zeroing), so an idle server still hands it back.
fn keep_freed_memory(delay_ms: std::ffi::c_long) {
    // `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h); -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide allocator option; mimalloc allows this at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms) };
}

/// tree-sitter allocates every syntax-tree node with libc's `malloc`; routing it to mimalloc,
/// like the Rust side, cut `srcode scan`'s CPU time on 1,000 files by 4% (parsing is half of it).
fn tree_sitter_uses_mimalloc() {
    // SAFETY: called first thing in `main`, before any tree-sitter object exists, so nothing
    // allocated by one allocator is ever freed by the other; the four functions are mimalloc's
    // C-compatible malloc/calloc/realloc/free.
    unsafe {
        tree_sitter::set_allocator(
            Some(libmimalloc_sys::mi_malloc),
            Some(libmimalloc_sys::mi_calloc),
            Some(libmimalloc_sys::mi_realloc),
            Some(libmimalloc_sys::mi_free),
        )
    };
}

fn main() {
    tree_sitter_uses_mimalloc();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let workload = match &cli.command {
        Command::Bench(bench::BenchCommand::Train(_)) | Command::Train(_) => {
            srcode_lm::CpuWorkload::Training
        }
        _ => srcode_lm::CpuWorkload::Inference,
    };
    keep_freed_memory(if workload == srcode_lm::CpuWorkload::Training {
        -1
    } else {
        1000
    });
    srcode_lm::init_cpu_runtime(workload);
    let result: Result<i32> = match cli.command {
        Command::Model(c) => model_cmd::run(c).map(|()| 0),
        Command::Generate(a) => generate::run(a).map(|()| 0),
        Command::Bench(c) => bench::run(c).map(|()| 0),
        Command::Scan(a) => scan_cmd::run(a),
        Command::Reward(a) => reward_cmd::run(a).map(|()| 0),
        Command::Data(c) => data_cmd::run(c),
        Command::Train(c) => train_cmd::run(c).map(|()| 0),
        Command::Sandbox(c) => sandbox_cmd::run(c),
        Command::Eval(a) => eval_cmd::run(a).map(|()| 0),
        Command::Serve(a) => serve_cmd::run(a).map(|()| 0),
        Command::Report(a) => report_cmd::run(a).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
