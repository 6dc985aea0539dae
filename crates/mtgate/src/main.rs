//! The `mtgate` binary: everything lives in the library; see `mtgate::cli`.

/// jemalloc, with a background thread that returns freed pages within about a
/// second (`JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`): after a
/// load ends, RSS goes back near its baseline, where glibc's allocator kept
/// its peak. Chosen by measurement, see docs/BENCHMARKS.md "Memory after load".
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    mtgate::cli::main()
}
