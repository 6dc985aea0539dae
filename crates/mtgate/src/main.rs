//! The `mtgate` binary: everything lives in the library; see `mtgate::cli`.

fn main() -> std::process::ExitCode {
    mtgate::cli::main()
}
