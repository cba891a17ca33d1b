//! One check's outcome and the report of all of them, printed for people (one line each) or as
//! one JSON document for machines. Pure: no I/O here.

use serde::Serialize;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not run: nothing to check with (no bucket given, no credentials), or not checkable from here.
    Skipped,
    Fail,
}

impl Status {
    /// The word a line starts with.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Fail => "FAIL",
        }
    }
}

/// What was checked, how it ended, what was found and, for a failure, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: a stable name (`credentials`, `ci <bucket> (<region>) binding`,
    /// `pulsar.result_topic`, …).
    pub name: String,
    pub status: Status,
    /// What was found (never a secret).
    pub detail: String,
    /// What to do about it (failures; `null` otherwise in JSON).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn skipped(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Skipped,
            detail: why.into(),
            fix: None,
        }
    }

    pub fn fail(
        name: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: problem.into(),
            fix: Some(fix.into()),
        }
    }

    /// The check's line: `<status> <name>: <detail>[ — fix: <fix>]`, the status padded so that
    /// names line up.
    pub fn line(&self) -> String {
        let mut line = format!("{:<7} {}: {}", self.status.label(), self.name, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(" — fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn extend(&mut self, checks: impl IntoIterator<Item = Check>) {
        self.checks.extend(checks);
    }

    /// No check failed (skipped ones do not fail the run).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// One line per check, then the tally.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&check.line());
            out.push('\n');
        }
        out.push_str(&format!(
            "doctor: {} ok, {} skipped, {} failed\n",
            self.count(Status::Ok),
            self.count(Status::Skipped),
            self.count(Status::Fail)
        ));
        out
    }

    /// `{"passed": bool, "checks": [{"name", "status", "detail", "fix"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "passed": self.passed(), "checks": self.checks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::default();
        r.push(Check::ok("credentials", "keys"));
        r.push(Check::skipped("ci bucket", "no --bucket given"));
        r
    }

    #[test]
    fn a_line_per_check_and_the_fix_on_failures_only() {
        let mut r = report();
        assert!(r.passed(), "skipped does not fail");
        r.push(Check::fail(
            "pulsar.result_topic",
            "does not exist",
            "create it",
        ));
        assert!(!r.passed());
        let text = r.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ok      credentials: keys",
                "skipped ci bucket: no --bucket given",
                "FAIL    pulsar.result_topic: does not exist — fix: create it",
                "doctor: 1 ok, 1 skipped, 1 failed",
            ]
        );
    }

    #[test]
    fn json_names_every_field() {
        let mut r = report();
        r.push(Check::fail("x", "broken", "mend"));
        let v = r.to_json();
        assert_eq!(v["passed"], false);
        assert_eq!(v["checks"][0]["status"], "ok");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["checks"][1]["status"], "skipped");
        assert_eq!(v["checks"][2]["status"], "fail");
        assert_eq!(v["checks"][2]["fix"], "mend");
        assert_eq!(v["checks"][2]["name"], "x");
        assert_eq!(v["checks"][2]["detail"], "broken");
    }
}
