//! Every decision that touches TLS, taken in one place as values.
//!
//! The delivery path for one recipient domain is gather → plan → execute:
//! `resolve::gather` collects the domain's DNS and policy facts
//! ([`facts::DomainFacts`]); [`plan::plan_domain`] (pure) turns them, with the
//! message's TLS demand, into the hosts to connect to, each with its
//! [`Requirement`], or the hosts skipped and why; delivery carries the plan out.
//! `tlsrelay check` runs the same gather and plan. No path here leads to
//! plaintext: the weakest outcome is `encrypt`, chosen by the operator.

pub mod facts;
pub mod host;
pub mod local;
pub mod mx;
pub mod overrides;
pub mod plan;
pub mod requirement;

pub use host::{host_plan, local_host_plan, requirement, wants_tlsa, HostPlan, StsRule};
pub use mx::{plan_mx, MxPlan};
pub use plan::{
    is_local_destination, plan_domain, Destinations, DomainPlan, HostStep, ReportFacts, Settings,
    SkipCause, Skipped, Target,
};
pub use requirement::{PeerCheck, Requirement};
