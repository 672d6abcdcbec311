"""Vercel: a blocking check on each deployment of a project with a Vercel project id, webhooks
that drive its validations, and rollbacks of production through Vercel's API."""
