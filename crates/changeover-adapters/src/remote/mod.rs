pub mod local;
pub mod ssh;
