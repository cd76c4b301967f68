"""The operations console at /console/: the home dashboard, the workflow graph (and its canvas),
the rule editor's and template preview's endpoints, and background jobs' status.

`selectors` reads (each selector takes the user), `views` parse, call and render, `urls` mounts
them behind the admin's login.
"""
