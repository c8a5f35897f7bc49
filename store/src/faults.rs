//! Test-only fault injection: with the `fault-injection` feature, a test arms
//! a point (`"submit"`, `"settle"`, `"reap"`, `"append"`) and the next
//! transaction passing it fails just before its commit, so the conformance
//! suite can show that nothing of it persisted and that the store carries on.
//! Without the feature every check compiles to nothing.

#[derive(Debug, Default)]
pub struct Faults {
    #[cfg(feature = "fault-injection")]
    armed: std::sync::Mutex<Vec<&'static str>>,
}

impl Faults {
    /// Makes the next transaction that passes `point` fail before its commit.
    #[cfg(feature = "fault-injection")]
    pub fn arm(&self, point: &'static str) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).push(point);
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn check(&self, point: &'static str) -> Result<(), crate::StoreError> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        match armed.iter().position(|p| *p == point) {
            Some(i) => {
                armed.remove(i);
                Err(crate::StoreError::Injected(point))
            }
            None => Ok(()),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub(crate) fn check(&self, _point: &'static str) -> Result<(), crate::StoreError> {
        Ok(())
    }
}
