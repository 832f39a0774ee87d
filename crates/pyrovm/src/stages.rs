//! The stages of one execution inside one VM: the compile stage (languages with
//! `compile` in the table), then the program once, or once per test case. Each
//! stage is a job of its own on the agent channel, with its own limits; test cases
//! each start from a fresh copy of the compiled work dir (`Checkpoint`/`Rewind`).
//! One-shot executions and sandbox execs both come through here.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tvm_api::{
    judge, overall, CaseCommand, CaseResult, ExecuteCommand, ExecuteResponse, ExecutionStatus,
    StageResult,
};
use tvm_proto::{GuestMsg, HostMsg, Job, WORK_DIR};
use tvm_vmm::Vm;

use crate::core::{
    converse, request, signal_name, status_of, Conversation, Executor, JobContext, OutputChunk,
};

/// How a stage that is not the program's own run ended.
enum Ran {
    /// The job ran to its end: how, and what it printed.
    Exited(StageResult),
    /// The agent could not start it; the VM is still usable.
    Failed(String),
    /// The VM died or went silent; it must be destroyed.
    Lost(String),
}

impl Executor {
    /// Runs `cmd` in `vm`: its compile stage if the language has one, then `job`
    /// (the program's run, already built for this VM), or every test case.
    /// The second value is `false` when the VM can no longer be used.
    pub(crate) async fn run_stages(
        &self,
        vm: &mut Vm,
        mut job: Job,
        cmd: &ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
        ctx: JobContext,
    ) -> (ExecuteResponse, bool) {
        // The table's environment for the language, under the request's own.
        let mut env = cmd.language.env.clone();
        env.append(&mut job.env);
        job.env = env;
        let path = format!("{WORK_DIR}/{}", job.code_file);

        let mut compile = None;
        if let Some(argv) = cmd.language.compile_argv(&path) {
            let mut cj = job.clone();
            cj.argv = argv;
            cj.stdin.clear();
            cj.limits.timeout_ms = cmd.limits.compile_timeout_ms;
            cj.limits.memory_bytes = cmd.limits.compile_memory_mb << 20;
            let started = Instant::now();
            let stage = match self.stage(vm, cj, cmd.limits.max_output_bytes).await {
                Ran::Exited(stage) => stage,
                Ran::Failed(why) => {
                    return (
                        self.stage_error(&ctx, &format!("the compiler could not start: {why}")),
                        true,
                    )
                }
                Ran::Lost(why) => {
                    tracing::warn!(id = %ctx.id, %why, console = %vm.console_tail(400), "VM lost during the compile");
                    return (
                        self.stage_error(&ctx, "the microVM stopped during the compile"),
                        false,
                    );
                }
            };
            tracing::debug!(id = %ctx.id, ms = started.elapsed().as_millis() as u64, status = ?stage.status, "compile stage");
            let ok = stage.status == ExecutionStatus::Completed && stage.exit_code == Some(0);
            if !ok {
                let mut resp = self.stage_error(&ctx, "");
                resp.status = ExecutionStatus::CompileError;
                resp.error = None;
                resp.timings_ms.exec = 0;
                resp.compile = Some(stage);
                return (resp, true);
            }
            compile = Some(stage);
            // The compile wrote the code and the files; the program's job need not.
            job.files.clear();
        }

        let (mut resp, usable) = if cmd.tests.is_empty() {
            self.run_job(vm, job, cmd, live, ctx).await
        } else {
            self.run_cases(vm, job, cmd, ctx, compile.is_some()).await
        };
        resp.compile = compile;
        (resp, usable)
    }

    /// Runs every test case from a fresh copy of the work dir as it is now (after
    /// the compile), each with its own limits and verdict. A case that crashes or
    /// times out does not stop the others; a VM that dies does.
    async fn run_cases(
        &self,
        vm: &mut Vm,
        job: Job,
        cmd: &ExecuteCommand,
        ctx: JobContext,
        compiled: bool,
    ) -> (ExecuteResponse, bool) {
        // An interpreted program's files are laid down by a job that does nothing,
        // so that the checkpoint holds them and no case's own run.
        if !compiled {
            let mut setup = job.clone();
            setup.argv = vec!["/bin/true".into()];
            setup.stdin.clear();
            match self.stage(vm, setup, 0).await {
                Ran::Exited(..) => {}
                Ran::Failed(why) => return (self.stage_error(&ctx, &why), true),
                Ran::Lost(_) => {
                    return (
                        self.stage_error(&ctx, "the microVM stopped before the tests"),
                        false,
                    )
                }
            }
        }
        let checkpoint = HostMsg::Checkpoint {
            max_bytes: job.limits.workdir_bytes,
        };
        match self.answer(vm, checkpoint).await {
            Ok(GuestMsg::Done) => {}
            Ok(other) => {
                let why = match other {
                    GuestMsg::FileError { message, .. } | GuestMsg::Failed { message } => message,
                    other => format!("agent answered {}", crate::core::kind(&other)),
                };
                return (self.stage_error(&ctx, &why), true);
            }
            Err(_) => {
                return (
                    self.stage_error(&ctx, "the microVM stopped before the tests"),
                    false,
                )
            }
        }

        let path = format!("{WORK_DIR}/{}", job.code_file);
        let mut results = Vec::with_capacity(cmd.tests.len());
        let mut usable = true;
        let mut exec_ms = 0;
        for (i, case) in cmd.tests.iter().enumerate() {
            if !usable {
                results.push(not_run(
                    "not run: the microVM stopped during an earlier case",
                ));
                continue;
            }
            if i > 0 {
                match self.answer(vm, HostMsg::Rewind).await {
                    Ok(GuestMsg::Done) => {}
                    Ok(_) | Err(_) => {
                        usable = false;
                        results.push(not_run("not run: the work dir could not be reset"));
                        continue;
                    }
                }
            }
            let cj = case_job(&job, cmd, case, &path);
            let r = match self.stage(vm, cj, case.limits.max_output_bytes).await {
                Ran::Exited(s) => {
                    exec_ms += s.duration_ms;
                    CaseResult {
                        verdict: judge(
                            s.status,
                            s.exit_code,
                            &s.stdout,
                            case.expected_stdout.as_deref(),
                        ),
                        status: s.status,
                        exit_code: s.exit_code,
                        signal: s.signal,
                        stdout: s.stdout,
                        stderr: s.stderr,
                        stdout_truncated: s.stdout_truncated,
                        stderr_truncated: s.stderr_truncated,
                        duration_ms: s.duration_ms,
                        error: None,
                    }
                }
                Ran::Failed(why) => not_run(&format!("the agent could not run the case: {why}")),
                Ran::Lost(why) => {
                    tracing::warn!(id = %ctx.id, case = i, %why, "VM lost during a test case");
                    usable = false;
                    not_run("the microVM stopped during this case")
                }
            };
            results.push(r);
        }
        let mut resp = self.stage_error(&ctx, "");
        resp.error = None;
        resp.status = ExecutionStatus::Completed;
        if results
            .iter()
            .any(|r| r.status == ExecutionStatus::SandboxError)
        {
            resp.status = ExecutionStatus::SandboxError;
            resp.error = Some("a test case could not be run".into());
        }
        resp.timings_ms.exec = exec_ms;
        resp.verdict = overall(&results);
        resp.tests = Some(results);
        (resp, usable)
    }

    /// Runs one job to its end, its output collected, within its own timeout plus
    /// the host's slack.
    async fn stage(&self, vm: &mut Vm, job: Job, cap: u64) -> Ran {
        let cap = if cap == 0 { 64 << 10 } else { cap as usize };
        let deadline =
            Duration::from_millis(job.limits.timeout_ms) + self.settings().host_deadline_slack;
        match tokio::time::timeout(deadline, converse(vm, job, cap, None, false)).await {
            Ok(Conversation::Exited(r, out)) => Ran::Exited(StageResult {
                status: status_of(r.outcome),
                exit_code: r.exit_code,
                signal: r.signal.map(signal_name),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                stdout_truncated: r.stdout_truncated || out.stdout_cut,
                stderr_truncated: r.stderr_truncated || out.stderr_cut,
                duration_ms: r.exec_ms,
            }),
            Ok(Conversation::Failed(why)) => Ran::Failed(why),
            Ok(Conversation::Broken(why)) => Ran::Lost(why),
            Ok(Conversation::Cancelled) => Ran::Lost("cancelled".into()),
            Err(_) => Ran::Lost("the agent did not report before the host deadline".into()),
        }
    }

    /// One request that is not a job, bounded; `Err` when the VM is lost.
    async fn answer(&self, vm: &mut Vm, msg: HostMsg) -> Result<GuestMsg, String> {
        const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
        tokio::time::timeout(REQUEST_TIMEOUT, request(vm, msg))
            .await
            .unwrap_or_else(|_| Err("the agent did not answer in time".into()))
    }

    fn stage_error(&self, ctx: &JobContext, msg: &str) -> ExecuteResponse {
        self.sandbox_error(
            ctx.id.clone(),
            msg,
            ctx.received,
            ctx.queued_ms,
            ctx.vm_start_ms,
        )
    }
}

/// The job of one test case: the program with the case's input and limits.
fn case_job(job: &Job, cmd: &ExecuteCommand, case: &CaseCommand, path: &str) -> Job {
    let mut j = job.clone();
    j.argv = cmd.language.argv(path, &case.args);
    j.stdin = case.stdin.clone();
    j.files.clear();
    j.limits.timeout_ms = case.limits.timeout_ms;
    j.limits.memory_bytes = case.limits.memory_mb << 20;
    j.limits.max_output_bytes = case.limits.max_output_bytes;
    j.limits.max_processes = case.limits.max_processes;
    j
}

fn not_run(why: &str) -> CaseResult {
    CaseResult {
        status: ExecutionStatus::SandboxError,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 0,
        verdict: None,
        error: Some(why.to_string()),
    }
}
