"""The admin: ops configure projects and act on validations, bypasses and rollbacks; auditors read
everything; nobody edits a decision or the audit log."""

from gates.admin import audit, config, tasks, validations, watches  # noqa: F401 - registers the model admins
