//! `tvm-agent`: PID 1 of every TVM guest. All logic lives in the library.

fn main() {
    let code = tvm_agent::run_as_init();
    // Reached only when the agent cannot even report over the channel.
    eprintln!("tvm-agent: giving up (code {code})");
    tvm_agent::power_off();
}
