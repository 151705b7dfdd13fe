/* A wrong solution: an int overflows on test 3, whose sum does not fit in 32 bits. */
#include <stdio.h>

int main(void)
{
    int sum = 0, n;

    while (scanf("%d", &n) == 1)
        sum += n;
    printf("%d\n", sum);
    return 0;
}
