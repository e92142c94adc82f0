"""Everything that talks to Label Studio: the API client, task file downloads and their policy, Data Manager
views, and what a prediction score means there."""
