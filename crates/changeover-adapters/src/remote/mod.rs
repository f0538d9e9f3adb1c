pub mod local;
pub mod ssh;
pub mod step;
