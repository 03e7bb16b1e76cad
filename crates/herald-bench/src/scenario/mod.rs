//! Scenarios: each runs its workload against one or more [`crate::model::System`]s and
//! returns rows for the report.

pub mod idle;
pub mod restart;
pub mod resume;
