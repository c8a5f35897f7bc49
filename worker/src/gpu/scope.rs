//! Error scopes: a GPU error belongs to the job whose commands raised it.
//!
//! wgpu reports a validation, out-of-memory or internal error to the innermost
//! matching error scope *of the thread that made the call* (resource creation,
//! `CommandEncoder::finish`, `Queue::submit`, `Buffer::map_async`), and only
//! when no scope is open there to the device-wide handler. So every piece of a
//! job's GPU work runs inside [`GpuContext::scoped`] on the thread doing it:
//! its errors come back as that job's [`GpuError`], for that frame, and two
//! jobs on two threads never see each other's errors.
//!
//! Several jobs in one submission ([`submit_shared`]): each job's commands go
//! into a command buffer of their own, finished inside that job's scopes
//! (wgpu validates recorded commands at `finish`), so a job whose commands are
//! invalid is left out and the others are submitted without it. The shared
//! `submit` can still fail as a whole: wgpu checks every command buffer of a
//! submission (for resources destroyed or mapped since recording, say) before
//! running any, and runs none if one fails. Then the error cannot be told
//! apart, so each job's frame is recorded again and submitted alone, in its
//! own scopes: the guilty job gets its error, the others their frames, at the
//! cost of one extra recording on a path that should never be taken.

use super::{GpuContext, GpuError};

/// One line of a wgpu error description (they span several, indented, under
/// headings the [`GpuError`] variant already says).
fn one_line(text: &str) -> String {
    let heading = |l: &str| ["validation error", "caused by", ""].contains(&l.to_ascii_lowercase().as_str());
    let lines: Vec<&str> = text.lines().map(|l| l.trim().trim_end_matches(':')).filter(|l| !heading(l)).collect();
    if lines.is_empty() {
        return text.trim().to_string();
    }
    lines.join(": ")
}

impl From<wgpu::Error> for GpuError {
    fn from(e: wgpu::Error) -> Self {
        match e {
            wgpu::Error::Validation { description, .. } => GpuError::Validation(one_line(&description)),
            wgpu::Error::OutOfMemory { source } => GpuError::OutOfMemory(one_line(&source.to_string())),
            wgpu::Error::Internal { description, .. } => GpuError::Internal(one_line(&description)),
        }
    }
}

impl GpuContext {
    /// Runs `work` (one job's GPU work, on this thread) inside error scopes for
    /// validation, out-of-memory and internal errors, and fails with the error
    /// they caught, if any: that error is this job's, whatever `work` returned
    /// (a readback after an invalid submission fails too, for the same cause).
    /// A lost device fails it too: it fails every job.
    ///
    /// `work` must not hand GPU calls to other threads and expect them to be
    /// caught here: scopes are per thread. Scopes nest, so `work` may call
    /// other scoped code; the innermost scope reports.
    pub fn scoped<T, E: From<GpuError>>(&self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        // Innermost first, as wgpu requires. A pop takes effect at once; with
        // the native backend its future is already resolved.
        let popped = [validation.pop(), internal.pop(), oom.pop()];
        let caught = popped.into_iter().find_map(pollster::block_on);
        if let Some(why) = self.device_lost() {
            return Err(GpuError::DeviceLost(why).into());
        }
        match caught {
            Some(e) => {
                self.errors.count(&e);
                Err(GpuError::from(e).into())
            }
            None => result,
        }
    }
}

/// How [`submit_shared`] went: per job, its submission or its error; and the
/// number of jobs in each submission made (one, or one per job after a failed
/// shared submit), for the metrics.
#[derive(Debug)]
pub struct Shared<E> {
    pub jobs: Vec<Result<wgpu::SubmissionIndex, E>>,
    pub submissions: Vec<usize>,
}

/// Records one frame of each job (`record`: encode the job's commands into
/// an encoder of its own and finish it) and submits them together, attributing
/// every GPU error to the job that caused it (see the module overview). A job
/// that failed is not submitted; the others are, and complete.
pub fn submit_shared<J, E: From<GpuError>>(
    ctx: &GpuContext,
    jobs: &mut [J],
    mut record: impl FnMut(&mut J) -> Result<wgpu::CommandBuffer, E>,
) -> Shared<E> {
    let mut buffers = Vec::with_capacity(jobs.len());
    let recorded: Vec<Result<(), E>> =
        jobs.iter_mut().map(|job| ctx.scoped(|| record(job)).map(|buffer| buffers.push(buffer))).collect();
    let ok: Vec<usize> = recorded.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    let mut submissions = Vec::new();
    // One result per job in `ok`, in order.
    let submitted: Vec<Result<wgpu::SubmissionIndex, E>> = if buffers.is_empty() {
        Vec::new()
    } else {
        match ctx.scoped(|| Ok::<_, GpuError>(ctx.queue.submit(buffers))) {
            Ok(index) => {
                submissions.push(ok.len());
                ok.iter().map(|_| Ok(index.clone())).collect()
            }
            Err(GpuError::DeviceLost(why)) => {
                ok.iter().map(|_| Err(GpuError::DeviceLost(why.clone()).into())).collect()
            }
            Err(shared) => {
                tracing::warn!(error = %shared, jobs = ok.len(), "a shared GPU submission failed; each job's frame is submitted alone to find whose error it was");
                ok.iter()
                    .map(|&i| {
                        let alone = ctx.scoped(|| {
                            let buffer = record(&mut jobs[i])?;
                            Ok(ctx.queue.submit([buffer]))
                        });
                        if alone.is_ok() {
                            submissions.push(1);
                        }
                        alone
                    })
                    .collect()
            }
        }
    };
    let mut submitted = submitted.into_iter();
    let jobs = recorded
        .into_iter()
        .map(|r| r.and_then(|()| submitted.next().expect("one result per job that recorded")))
        .collect();
    Shared { jobs, submissions }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn wgpu_descriptions_become_one_line_without_their_headings() {
        let text = "Validation Error\n\nCaused by:\n  In a CommandEncoder, label = 'frame'\n    Copy at offset 0 for 256 bytes would end up overrunning the bounds of the Source buffer of size 4\n";
        assert_eq!(
            one_line(text),
            "In a CommandEncoder, label = 'frame': Copy at offset 0 for 256 bytes would end up overrunning the bounds of the Source buffer of size 4"
        );
        assert_eq!(one_line("Validation Error\n"), "Validation Error");
    }
}
