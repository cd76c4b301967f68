"""Operations on agents and cases. Views, admin, tasks and the step kind call these."""
