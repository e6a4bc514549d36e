"""What crosses the wire and what it means. Pure, sans-I/O; imports no other package of ours."""
