//! The Cloud Infinite protocol: signature, XML, response models (pure) and the HTTP client (I/O).

pub mod cam;
pub mod client;
pub mod lists;
pub mod response;
pub mod rules;
pub mod sign;
pub mod tree;
pub mod xml;

/// `<bucket>.ci.<region>.myqcloud.com`: the host every CI call carries and signs, whatever address
/// the request is actually sent to.
pub fn ci_host(bucket: &str, region: &str) -> String {
    format!("{bucket}.ci.{region}.myqcloud.com")
}
