"""One training job: read the project (tasks), run the round (round, group, clusters), publish (publication)."""
