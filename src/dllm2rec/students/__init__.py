from dllm2rec.students.base import SequentialStudent, build_student

__all__ = ["SequentialStudent", "build_student"]
