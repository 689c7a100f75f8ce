//! ember's in-process VMM.

pub mod arch;
