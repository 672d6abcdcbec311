"""Integration records (credentials, outbox, webhook deliveries) arrive with the GitHub and Vercel
issues; the app exists now so the layout is complete."""
