"""The upload state machine: create, append, finish, concatenate, terminate, expire."""
