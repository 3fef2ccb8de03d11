"""`beem loadtest`: drive a running server with open- or closed-loop load and compare exit policies."""
