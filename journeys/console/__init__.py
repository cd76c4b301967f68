"""The operations console at /console/: the home dashboard, the workflow graph and its canvas,
the rule editor's and template preview's endpoints, and background jobs' status.

`selectors` reads for the dashboard, Customer 360, the rule editor and jobs; `graph` reads a
version as a graph and draws it; `canvas` is the draft editor's endpoints; `governance` reads
for the admin's review, compare and ops-dashboard pages; `views` parse, call and render; `urls`
mounts them behind the admin's login. Each read takes the user.
"""
