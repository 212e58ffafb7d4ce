//! Access metadata of a node: users and their password hashes, vhosts, permissions, topic
//! permissions, limits and policies, with RabbitMQ's authorization rules and its definitions
//! JSON format. Pure data and checks: no I/O, no clock, no async. The server owns the
//! [`Directory`], persists its [`Change`]s and asks [`Grants`] before each operation.

pub mod authz;
pub mod definitions;
pub mod directory;
pub mod error;
pub mod json_args;
pub mod model;
pub mod password;
pub mod policy;
mod regex_compat;

pub use authz::{Grants, Perm, Resource, TopicVars};
pub use definitions::{BindingDef, Definitions, ExchangeDef, ImportPlan, QueueDef};
pub use directory::{Change, Directory};
pub use error::{AccessError, AuthFailure};
pub use model::{ApplyTo, HashingAlgorithm, Permission, Policy, TopicPermission, User, UserLimits, Vhost, VhostLimits};
pub use policy::validate_policy_definition;
