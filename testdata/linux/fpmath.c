// fpmath: floating-point formatting, parsing and arithmetic whose output
// depends on the x87 and SSE control state (precision, rounding), for
// comparison with a native run (cmd/hvft/fpu_test.go). Built with
// -frounding-math, and every operand is volatile, so that the compiler
// folds nothing that the CPU should compute.
#include <fenv.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static volatile double dvals[] = {
	0.1, 0.2, 0.3, 1.0 / 3, 2.5, 3.14159, -0.0, 1e-300, 1e308, 5e-324,
	2.2250738585072014e-308, 1.7976931348623157e308, 123456789.125, 9007199254740993.0,
};

static const char *strs[] = {
	"0.1", "3.14159", "1e-300", "2.5", "1e308", "0.3", "-0", "1e-400", "1e400",
	"123456789012345678901234567890", "2.2250738585072014e-308",
	"4.9406564584124654e-324", "9007199254740993", "0x1.8p1", "0.1e-5", "inf",
};

static const struct {
	int mode;
	const char *name;
} modes[] = {
	{FE_TONEAREST, "nearest"}, {FE_DOWNWARD, "down"}, {FE_UPWARD, "up"}, {FE_TOWARDZERO, "zero"},
};

int main(void) {
	// A long double to integer conversion first: the compiler brackets its
	// FISTP with FLDCW, the first write of the control word in this process.
	volatile long double big = 1e18L, lthree = 3.0L, lone = 1.0L;
	printf("(long)(1e18L/3) %ld\n", (long)(big / lthree));
	long double lq = lone / lthree;
	printf("1.0L/3.0L %.21Lg %La\n", lq, lq);
	printf("sqrtl(2) %.21Lg\n", sqrtl(lone + lone));
	printf("strtold(0.1) %.21Lg\n", strtold("0.1", NULL));
	printf("atof(0.1) %.17g\n", atof("0.1"));
	for (size_t i = 0; i < sizeof dvals / sizeof dvals[0]; i++) {
		double d = dvals[i];
		printf("%g %.17g %a %e\n", d, d, d, d);
	}
	for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
		double d = strtod(strs[i], NULL);
		printf("strtod(%s) %g %.17g %a\n", strs[i], d, d, d);
	}
	volatile double one = 1.0, three = 3.0, x = 2.5, y = -2.5, tenth = 0.1, ten = 10.0;
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
		if (fesetround(modes[i].mode) != 0) {
			printf("fesetround(%s) failed\n", modes[i].name);
			return 1;
		}
		double q = one / three;
		long double lq3 = lone / lthree;
		printf("%s 1/3 %.17g %a 1/3L %.21Lg rint(2.5) %g rint(-2.5) %g nearbyint(2.5) %g lrint(2.5) %ld sqrt(2) %.17g fma %a\n",
		       modes[i].name, q, q, lq3, rint(x), rint(y), nearbyint(x), lrint(x), sqrt(one + one), fma(tenth, ten, -one));
	}
	fesetround(FE_TONEAREST);
	return 0;
}
