//! `tvm-agent`: PID 1 of every TVM guest. All logic lives in the library.

fn main() {
    let code = tvm_agent::run_as_init();
    if code != 0 {
        // The reason was printed to the console, which the host keeps in console.log.
        eprintln!("tvm-agent: stopping early (code {code})");
    }
    tvm_agent::power_off();
}
